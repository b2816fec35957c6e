// Reads a failed dlopen's message (glibc's dlerror text, which Node passes on) and says in one line
// which shared library or symbol is missing, so a load error names what to install.

/** Debian/Ubuntu packages that provide the libraries an addon build may need. */
const DEBIAN_PACKAGES: Record<string, string> = {
  'libopenblas.so.0': 'libopenblas0',
  'libstdc++.so.6': 'libstdc++6',
  'libgcc_s.so.1': 'libgcc-s1',
  'libgfortran.so.5': 'libgfortran5',
  'libgomp.so.1': 'libgomp1',
};

/** One sentence naming what the loader could not find, or undefined when the message names nothing. */
export function describeDlopenError(message: string): string | undefined {
  const line = message.split('\n')[0];
  const missingLib = /(?:^|\s)([^\s:]+): cannot open shared object file/.exec(line);
  if (missingLib) {
    const lib = missingLib[1].split('/').pop() ?? missingLib[1];
    if (lib.endsWith('.node')) return undefined; // the addon file itself, not a library it needs
    const pkg = DEBIAN_PACKAGES[lib];
    return `Missing shared library: ${lib}${pkg ? ` (Debian/Ubuntu: sudo apt-get install ${pkg})` : ''}; install the package that provides it, or rebuild the addon on this machine.`;
  }
  const version = /version `([^']+)' not found \(required by ([^)]+)\)/.exec(line);
  if (version) {
    const lib = /([^\s:/]+): version `/.exec(line)?.[1] ?? 'a system library';
    return `Missing library version: ${version[1]} of ${lib} (this system's is older than the one the binary was built on); rebuild the addon on this machine.`;
  }
  const symbol = /undefined symbol: (\S+)/.exec(line);
  if (symbol) {
    return `Missing symbol: ${symbol[1]} (no loaded library provides it: the binary was built against another version of a library); rebuild the addon on this machine.`;
  }
  return undefined;
}
