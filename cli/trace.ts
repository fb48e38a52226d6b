import type { Command } from './main.js'

export const command: Command = {
  summary: '(not implemented yet)',
  usage: 'warden trace: not implemented yet',
  options: {},
  async run () {
    console.error('warden trace: not implemented yet')
    return 2
  }
}
