import AxeBuilder from '@axe-core/playwright';
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

/** No WCAG 2 A/AA violation that axe can find (labels, names, contrast, ARIA). */
export async function expectAccessible(page: Page, name: string): Promise<void> {
  const results = await new AxeBuilder({ page })
    .withTags(['wcag2a', 'wcag2aa'])
    .exclude('.u-legend') // uPlot's legend table; the chart has a text alternative
    .analyze();
  const problems = results.violations.map(
    (v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(' ')).join(', ')})`,
  );
  expect(problems, `accessibility problems on ${name}`).toEqual([]);
}

/** Saves the page in the light theme, then in the dark theme, checking each with axe. */
export async function screenshots(page: Page, name: string): Promise<void> {
  for (const theme of ['light', 'dark'] as const) {
    await page.getByLabel('Theme').selectOption(theme);
    await page.waitForTimeout(150); // charts re-create themselves on a theme change
    await page.screenshot({ path: `${SHOTS}/${name}-${theme}.png`, fullPage: true });
    await expectAccessible(page, `${name} (${theme})`);
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
