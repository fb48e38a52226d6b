// Every command ends the same way: 0 done, 1 it ran and failed, 2 it was called wrongly (with
// its usage on stderr). Scripts around warden branch on these.
import t from 'tap'
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { runCli as run } from '../helpers/cli.js'


const dir = mkdtempSync(join(tmpdir(), 'warden-cli-'))
t.teardown(() => rmSync(dir, { recursive: true, force: true }))
t.test('called wrongly: exit 2 and the usage', async (t) => {
  const cases: Array<[string, string[], RegExp]> = [
    ['no command', [], /Usage: warden <command>/],
    ['unknown command', ['frobnicate'], /unknown command "frobnicate"/],
    ['unknown flag', ['check', '--polices', dir], /Unknown option '--polices'/],
    ['check without --policies', ['check'], /--policies DIR is required/],
    ['trace without its flags', ['trace', '--policies', dir], /missing --endpoints, --from, --to, --port/],
    ['trace with a bad port', ['trace', '--policies', dir, '--endpoints', dir, '--from', 'a', '--to', 'b', '--port', '0'], /--port must be 1..65535/],
    ['run without --policies', ['run'], /--policies and --endpoints are required/],
    ['run with a bad port', ['run', '--policies', dir, '--endpoints', dir, '--proxy-port', '70000'], /--proxy-port must be a whole number from 1 to 65535/],
    ['run with a max TTL below the min', ['run', '--policies', dir, '--endpoints', dir, '--fqdn-min-ttl', '30', '--fqdn-max-ttl', '10'], /--fqdn-max-ttl must be a whole number from 30 to/],
    ['run with no IP per name', ['run', '--policies', dir, '--endpoints', dir, '--fqdn-max-ips-per-name', '0'], /--fqdn-max-ips-per-name must be a whole number from 1 to/],
    ['run with a bad deny response', ['run', '--policies', dir, '--endpoints', dir, '--deny-response', 'drop'], /--deny-response must be 403 or reset/],
    ['run with no HTTP/2 stream allowed', ['run', '--policies', dir, '--endpoints', dir, '--h2-max-concurrent-streams', '0'], /--h2-max-concurrent-streams must be a whole number from 1 to 2147483647/],
    ['run with no HTTP/2 upstream session allowed', ['run', '--policies', dir, '--endpoints', dir, '--h2-max-upstream-sessions', '0'], /--h2-max-upstream-sessions must be a whole number from 1 to 1000000/],
    ['run with a per-source share above the pool', ['run', '--policies', dir, '--endpoints', dir, '--h2-max-upstream-sessions', '64', '--h2-max-upstream-sessions-per-source', '65'], /--h2-max-upstream-sessions-per-source must not exceed --h2-max-upstream-sessions \(64\), got 65/],
    ['run with no per-source share', ['run', '--policies', dir, '--endpoints', dir, '--h2-max-upstream-sessions-per-source', '0'], /--h2-max-upstream-sessions-per-source must be a whole number from 1 to/],
    ['run with no connection share per source', ['run', '--policies', dir, '--endpoints', dir, '--http-max-connections-per-source', '0'], /--http-max-connections-per-source must be a whole number from 1 to 10000, got "0"/],
    ['run with a connection share above the worker\'s connections', ['run', '--policies', dir, '--endpoints', dir, '--http-max-connections-per-source', '10001'], /--http-max-connections-per-source must be a whole number from 1 to 10000, got "10001"/],
    ['run with an HTTP/2 window past 2^31-1', ['run', '--policies', dir, '--endpoints', dir, '--h2-initial-window-size', '2147483648'], /--h2-initial-window-size must be a whole number from 0 to 2147483647/],
    ['uninstall with a bad table', ['uninstall', '--route-table', 'main'], /--route-table must be a table number/],
    ['lab with a bad action', ['lab', 'sideways', '--endpoints', dir], /the action must be up or down/]
  ]
  for (const [name, argv, message] of cases) {
    const r = await run(argv)
    t.equal(r.code, 2, `${name}: exit 2`)
    t.match(r.err, message, `${name}: says why`)
    t.match(r.err, /Usage: warden/, `${name}: prints the usage`)
  }
})

t.test('ran and failed: exit 1; an error without a field path has no empty path', async (t) => {
  const policies = join(dir, 'policies')
  mkdirSync(policies)
  writeFileSync(join(policies, 'bad.yaml'), 'apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: x\n')
  const r = await run(['check', '--policies', policies])
  t.equal(r.code, 1)
  t.match(r.out, /bad\.yaml:\d+:\d+: YAML: /)
  t.notMatch(r.out, /: : /)
})

t.test('help: exit 0', async (t) => {
  t.equal((await run(['--help'])).code, 0)
  t.equal((await run(['check', '--help'])).code, 0)
})
