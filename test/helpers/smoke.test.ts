import t from 'tap'
import { PROTO } from '../../policy-store/src/types.js'
t.equal(PROTO.TCP, 6)
