// The op layer: every caller above src/backend/ uses these functions, never a Backend's methods.
// Each op checks its arguments once, then calls the kernel of the backend its tensors live on
// (docs/ops.md: the rules, and what adding an op family touches).
export * from './loss.js';
export * from './memory.js';
export * from './model.js';
export * from './optim.js';
export * from './sample.js';
