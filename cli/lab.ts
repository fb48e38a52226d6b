import type { Command } from './main.js'

export const command: Command = {
  summary: '(not implemented yet)',
  usage: 'warden lab: not implemented yet',
  options: {},
  async run () {
    console.error('warden lab: not implemented yet')
    return 2
  }
}
