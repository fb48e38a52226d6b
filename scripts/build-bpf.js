#!/usr/bin/env node
// Builds the tc eBPF object (redirect-bpf/bpf/warden.bpf.c -> redirect-bpf/build/warden.bpf.o)
// with clang. Called by `npm run build`. Fails loudly when clang or libbpf's headers are
// missing: a warden without its datapath must not look built (scripts/setup.sh installs them).
import { execFileSync } from 'node:child_process'
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync } from 'node:fs'
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
  fail('clang not found: install it (apt-get install clang libbpf-dev linux-libc-dev) or run scripts/setup.sh')
}

// The program sees only the kernel's UAPI headers and libbpf's, never libc's: `-nostdinc`
// and one include directory of our own that links just those trees. clang -target bpf
// defines no host architecture macros, so a libc header would pick the wrong (32-bit)
// variant on some machines and none on others; here any libc include fails everywhere.
const arch = process.arch === 'arm64' ? 'aarch64' : 'x86_64'
const includeTrees = {
  linux: '/usr/include/linux',
  'asm-generic': '/usr/include/asm-generic',
  asm: `/usr/include/${arch}-linux-gnu/asm`,
  bpf: '/usr/include/bpf'
}
const packageOf = { bpf: 'libbpf-dev' }
for (const [name, dir] of Object.entries(includeTrees)) {
  if (!existsSync(dir)) fail(`${dir} missing: apt-get install ${packageOf[name] ?? 'linux-libc-dev'}`)
}
const includeDir = join(outDir, 'include')
function stageIncludes () {
  rmSync(includeDir, { recursive: true, force: true })
  mkdirSync(includeDir, { recursive: true })
  for (const [name, dir] of Object.entries(includeTrees)) symlinkSync(dir, join(includeDir, name))
}

const inputs = [src, header, fileURLToPath(import.meta.url)]
const upToDate = existsSync(out) && process.env.FORCE !== '1' &&
  statSync(out).mtimeMs > Math.max(...inputs.map((f) => statSync(f).mtimeMs))
if (!upToDate) {
  mkdirSync(outDir, { recursive: true })
  stageIncludes()
  const tmp = out + '.tmp'
  try {
    execFileSync('clang', ['-O2', '-g', '-Wall', '-Werror', '-target', 'bpf', '-nostdinc',
      '-I', includeDir, '-c', src, '-o', tmp], { stdio: 'inherit' })
  } catch {
    fail(`clang failed on ${src}`)
  }
  // strip DWARF (keeps BTF): smaller object, faster load
  try { execFileSync('llvm-strip', ['-g', tmp], { stdio: 'ignore' }) } catch { /* optional */ }
  renameSync(tmp, out)
  console.log(`build-bpf: built ${out} (${readFileSync(out).length} bytes)`)
}
