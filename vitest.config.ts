import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  resolve: {
    // Tests run against the sources, so `pnpm test` needs no prior build.
    alias: {
      '@musclelora/trainer': fileURLToPath(new URL('./packages/trainer/src/index.ts', import.meta.url)),
    },
  },
  test: {
    include: ['packages/*/test/**/*.test.ts', 'tests/**/*.test.ts'],
    // The machine is shared and small; two workers are plenty for these tests.
    maxWorkers: 2,
  },
});
