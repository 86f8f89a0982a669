import { defineConfig } from 'vitest/config';
import { svelte } from '@sveltejs/vite-plugin-svelte';

// The build goes straight into the Python package, so the backend (and the wheel) serve it.
export default defineConfig({
  plugins: [svelte()],
  resolve: process.env.VITEST ? { conditions: ['browser'] } : undefined,
  build: {
    outDir: '../backend/static',
    emptyOutDir: true,
    target: 'es2020',
    chunkSizeWarningLimit: 200,
    manifest: true,
  },
  server: {
    proxy: { '/v1': 'http://127.0.0.1:8000' },
  },
  test: {
    environment: 'jsdom',
    include: ['src/**/*.test.ts'],
    setupFiles: ['src/test-setup.ts'],
  },
});
