// Lint: ESLint's and typescript-eslint's recommended rules, with type information for the
// TypeScript, so a promise nobody awaits or a promise handed where a callback is expected fails
// the build. Each rule turned off below says why.
import js from '@eslint/js'
import { defineConfig, globalIgnores } from 'eslint/config'
import globals from 'globals'
import tseslint from 'typescript-eslint'

export default defineConfig([
  globalIgnores(['dist/', 'coverage/', '.tap/', 'redirect-bpf/build/', 'bench/results/']),
  js.configs.recommended,
  {
    files: ['**/*.js', '**/*.mjs'],
    languageOptions: { globals: globals.node }
  },
  {
    files: ['**/*.ts'],
    extends: [tseslint.configs.recommendedTypeChecked],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname }
    },
    rules: {
      '@typescript-eslint/no-floating-promises': ['error', {
        // A tap subtest's promise only ever resolves (a failure is reported in the TAP stream),
        // and the parent test waits for its subtests, so `t.test(...)` need not be awaited.
        allowForKnownSafePromises: [{ from: 'package', name: 'PromiseWithSubtest', package: '@tapjs/core' }]
      }],
      '@typescript-eslint/no-misused-promises': 'error',
      // Beyond the recommended set, rules that catch bugs of the kind a proxy cannot afford: a
      // state machine's switch that misses a state, a returned promise whose rejection escapes
      // the surrounding try, a spread of something that is not a plain record.
      '@typescript-eslint/switch-exhaustiveness-check': ['error', { considerDefaultExhaustiveForUnions: true }],
      '@typescript-eslint/return-await': ['error', 'error-handling-correctness-only'],
      '@typescript-eslint/no-misused-spread': ['error', {
        // Flat numeric fields by design: metrics() copies them with a spread.
        allow: [{ from: 'file', name: 'Counters', path: 'proxy/src/http/context.ts' }]
      }],
      // Not enabled: no-unnecessary-condition, which asks to drop checks of data from peers and
      // files whose types are written as the data should be, not as it may arrive.

      // A leading underscore marks a parameter or binding an interface requires but this code
      // does not use.
      '@typescript-eslint/no-unused-vars': ['error', {
        argsIgnorePattern: '^_', varsIgnorePattern: '^_', caughtErrorsIgnorePattern: '^_',
        destructuredArrayIgnorePattern: '^_'
      }]
    }
  },
  {
    files: ['test/**/*.ts'],
    rules: {
      // tap's idiom is an async test callback: the subtest ends when its promise settles and a
      // throw fails that subtest, whether or not the body awaits anything.
      '@typescript-eslint/require-await': 'off'
    }
  }
])
