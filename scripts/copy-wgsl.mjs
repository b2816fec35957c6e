// Copies the WGSL kernel files (src/backend/webgpu/*.wgsl) next to the compiled JavaScript in dist/:
// the WebGPU backend reads them at run time from beside its own module.
import { copyFileSync, mkdirSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const from = join(root, 'src', 'backend', 'webgpu');
const to = join(root, 'dist', 'backend', 'webgpu');
mkdirSync(to, { recursive: true });
for (const f of readdirSync(from)) if (f.endsWith('.wgsl')) copyFileSync(join(from, f), join(to, f));
