// Builds the tc program with clang when the datapath sources exist (see redirect-bpf/).
// Replaced by the datapath's own build step.
