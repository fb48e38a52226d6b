#!/usr/bin/env node
// Builds the tc eBPF object (redirect-bpf/bpf/warden.bpf.c -> redirect-bpf/build/warden.bpf.o)
// with clang. Called by `npm run build`. Fails loudly when clang or libbpf's headers are
// missing: a warden without its datapath must not look built (scripts/setup.sh installs them).
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, renameSync, statSync } from 'node:fs'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..')
const src = join(root, 'redirect-bpf/bpf/warden.bpf.c')
const header = join(root, 'redirect-bpf/bpf/l7p.h')
const outDir = join(root, 'redirect-bpf/build')
const out = join(outDir, 'warden.bpf.o')

function fail (msg) {
  console.error(`build-bpf: ERROR: ${msg}`)
  process.exit(1)
}

try {
  execFileSync('clang', ['--version'], { stdio: 'ignore' })
} catch {
  fail('clang not found: install it (apt-get install clang libbpf-dev) or run scripts/setup.sh')
}
if (!existsSync('/usr/include/bpf/bpf_helpers.h')) fail('libbpf headers missing: apt-get install libbpf-dev')

const upToDate = existsSync(out) && process.env.FORCE !== '1' &&
  statSync(out).mtimeMs > Math.max(statSync(src).mtimeMs, statSync(header).mtimeMs)
if (!upToDate) {
  mkdirSync(outDir, { recursive: true })
  const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64'
  const tmp = out + '.tmp'
  try {
    execFileSync('clang', ['-O2', '-g', '-Wall', '-Werror', '-target', 'bpf',
      `-I/usr/include/${arch}-linux-gnu`, '-c', src, '-o', tmp], { stdio: 'inherit' })
  } catch {
    fail(`clang failed on ${src}`)
  }
  // strip DWARF (keeps BTF): smaller object, faster load
  try { execFileSync('llvm-strip', ['-g', tmp], { stdio: 'ignore' }) } catch { /* optional */ }
  renameSync(tmp, out)
  console.log(`build-bpf: built ${out} (${readFileSync(out).length} bytes)`)
}
