/**
 * `warden` command line. Each command lives in its own module, loaded on demand, so that
 * `warden check` never loads the eBPF or proxy code and every command owns one file.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { EXIT, UsageError } from './usage.js'

export { EXIT, UsageError } from './usage.js'

/** What node:util parseArgs gives back for `--name value` options and `--flag` switches. */
export type OptionValues = Record<string, string | boolean | (string | boolean)[] | undefined>

export interface Command {
  summary: string
  usage: string
  options: NonNullable<ParseArgsConfig['options']>
  /** Returns the process exit code (EXIT); throws UsageError when called wrongly. */
  run (values: OptionValues, positionals: string[]): Promise<number>
}

const COMMANDS: Record<string, () => Promise<{ command: Command }>> = {
  check: async () => await import('./check.js'),
  trace: async () => await import('./trace.js'),
  run: async () => await import('./run.js'),
  uninstall: async () => await import('./uninstall.js'),
  lab: async () => await import('./lab.js'),
  demo: async () => await import('./demo.js'),
  status: async () => await import('./status.js'),
  observe: async () => await import('./observe.js'),
  endpoint: async () => ({ command: (await import('./inspect.js')).endpoint }),
  identity: async () => ({ command: (await import('./inspect.js')).identity }),
  fqdn: async () => ({ command: (await import('./inspect.js')).fqdn }),
  policy: async () => ({ command: (await import('./inspect.js')).policy })
}

async function help (): Promise<string> {
  const lines = ['warden: node-level L7 policy proxy enforcing CiliumNetworkPolicy with tc eBPF', '', 'Usage: warden <command> [options]', '', 'Commands:']
  for (const [name, load] of Object.entries(COMMANDS)) {
    const { command } = await load()
    lines.push(`  ${name.padEnd(10)} ${command.summary}`)
  }
  lines.push('', 'Run `warden <command> --help` for its options.')
  return lines.join('\n')
}

export async function main (argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    if (name === undefined) {
      console.error(await help())
      return EXIT.USAGE
    }
    console.log(await help())
    return EXIT.OK
  }
  const load = COMMANDS[name]
  if (load === undefined) {
    console.error(`warden: unknown command "${name}"\n\n${await help()}`)
    return EXIT.USAGE
  }
  const { command } = await load()
  if (rest.includes('--help') || rest.includes('-h')) {
    console.log(command.usage)
    return EXIT.OK
  }
  let parsed
  try {
    parsed = parseArgs({ args: rest, options: command.options, allowPositionals: true, strict: true })
  } catch (err) {
    console.error(`warden ${name}: ${(err as Error).message}\n\n${command.usage}`)
    return EXIT.USAGE
  }
  try {
    return await command.run(parsed.values, parsed.positionals)
  } catch (err) {
    if (!(err instanceof UsageError)) throw err
    console.error(`warden ${name}: ${err.message}\n\n${command.usage}`)
    return EXIT.USAGE
  }
}
