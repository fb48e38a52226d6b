import type { Command } from './main.js'

export const command: Command = {
  summary: '(not implemented yet)',
  usage: 'warden run: not implemented yet',
  options: {},
  async run () {
    console.error('warden run: not implemented yet')
    return 2
  }
}
