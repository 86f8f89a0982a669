import { expect, type Page } from '@playwright/test';
import { mkdirSync } from 'node:fs';

export const env = {
  email: process.env.KAVACH_EMAIL ?? '',
  password: process.env.KAVACH_PASSWORD ?? '',
  agent: process.env.KAVACH_AGENT ?? 'research-bot',
  apiKey: process.env.KAVACH_API_KEY ?? '',
  spendTodayNanos: Number(process.env.KAVACH_SPEND_TODAY_NANOS ?? '0'),
  runId: process.env.KAVACH_RUN_ID ?? '',
};

const SHOTS = 'test-results/screenshots';
mkdirSync(SHOTS, { recursive: true });

/** Saves the page in the light theme, then in the dark theme. */
export async function screenshots(page: Page, name: string): Promise<void> {
  for (const theme of ['light', 'dark'] as const) {
    await page.getByLabel('Theme').selectOption(theme);
    await page.waitForTimeout(150); // charts re-create themselves on a theme change
    await page.screenshot({ path: `${SHOTS}/${name}-${theme}.png`, fullPage: true });
  }
  await page.getByLabel('Theme').selectOption('light');
}

export async function login(page: Page): Promise<void> {
  await page.goto('/login');
  await page.getByLabel('E-mail').fill(env.email);
  await page.getByLabel('Password').fill(env.password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await expect(page.getByRole('heading', { name: 'Overview' })).toBeVisible();
}

export async function controlStatus(page: Page): Promise<string> {
  const response = await page.request.get(`/v1/control?agents=${encodeURIComponent(env.agent)}&wait=0`, {
    headers: { Authorization: `Bearer ${env.apiKey}` },
  });
  expect(response.ok()).toBeTruthy();
  const body = await response.json();
  return body.control[env.agent].status as string;
}
