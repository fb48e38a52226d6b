/**
 * The policy store's public surface. Consumers (agent, datapath, proxies, CLI) import from
 * here only.
 */
export * from './types.js'
export * from './l7-match.js'
export { ERR, formatPolicyError, PolicyLoadError, StoreError, type PolicyError, type PolicyErrorCode } from './errors.js'
export { loadSnapshot, openStore, type LoadSummary, type PolicyStore, type StoreInventory, type StoreOptions } from './store.js'
export { DirectoryPolicySource, type PolicyListing, type PolicyResource, type PolicySource } from './policy-source.js'
export { FileEndpointSource, type EndpointSource, type RawEndpoint } from './endpoints.js'
export { DEFAULT_RELEASE_GRACE_MS, FileIdentityAllocator, MemoryIdentityAllocator, type AllocatorOptions, type IdentityAllocator } from './identity.js'
export { DEFAULT_IDENTITY_LABEL_PATTERNS, IdentityLabelFilter } from './label-filter.js'
export { lookupKernel } from './resolve.js'
export { lookupIpcache, traceFlow, type TraceQuery, type TraceResult, type TracePeer } from './trace.js'
export { compileMatchName, compileMatchPattern, normalizeFqdn } from './matchers.js'
