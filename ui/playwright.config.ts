import { defineConfig } from '@playwright/test';

// Driven by tests/ui/test_e2e.py, which starts the backend, sends an SDK guard's calls and
// passes the URL and the account in the environment. Debian's Chromium, no downloaded browser.
export default defineConfig({
  testDir: 'e2e',
  outputDir: 'test-results/playwright',
  workers: 1,
  fullyParallel: false,
  retries: 0,
  timeout: 60_000,
  expect: { timeout: 10_000 },
  reporter: [['list']],
  use: {
    baseURL: process.env.KAVACH_URL ?? 'http://127.0.0.1:8000',
    trace: 'off',
    launchOptions: {
      executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
    },
  },
});
