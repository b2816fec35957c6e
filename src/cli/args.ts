// Declarative command-line options: TRL / Hugging Face names in snake_case (kebab-case accepted too),
// typed values, per-iteration lists, defaults, a config file (YAML or JSON) under the flags, and errors
// that name the flag, the value and what was expected, with a suggestion for misspelt flags.
import { INPUT_CAPS, InputFileError, readInputFileSync } from '../util/input_file.js';
import YAML from 'yaml';

export type OptionType = 'string' | 'number' | 'int' | 'bool' | 'numbers' | { oneOf: readonly string[] };

export interface OptionSpec {
  name: string; // snake_case
  /** Older spellings accepted for this option (snake_case; kebab-case works too), listed in --help. */
  aliases?: readonly string[];
  type: OptionType;
  help: string;
  default?: unknown;
  required?: boolean;
  /** Extra check on the parsed value; return a message for a bad one. */
  check?: (v: never) => string | null;
}

export class UsageError extends Error {}

export type Parsed = Record<string, unknown>;

function levenshtein(a: string, b: string): number {
  const d = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0][j] = j;
  for (let i = 1; i <= a.length; i++)
    for (let j = 1; j <= b.length; j++)
      d[i][j] = Math.min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
  return d[a.length][b.length];
}

export function suggest(name: string, known: readonly string[]): string {
  const best = known.map((k) => [k, levenshtein(name, k)] as const).sort((x, y) => x[1] - y[1])[0];
  return best && best[1] <= Math.max(2, Math.floor(name.length / 3)) ? ` Did you mean --${best[0]}?` : '';
}

function describeType(t: OptionType): string {
  if (typeof t === 'object') return `one of ${t.oneOf.join(', ')}`;
  return { string: 'a string', number: 'a number', int: 'an integer', bool: 'true or false', numbers: 'a comma-separated list of numbers' }[
    t
  ];
}

/** Converts a raw value (CLI string, or a config-file value) to the option's type. */
function convert(spec: OptionSpec, raw: unknown, where: string, label = `--${spec.name}`): unknown {
  const bad = () => new UsageError(`${where} ${label}: got ${JSON.stringify(raw)}, expected ${describeType(spec.type)}`);
  const t = spec.type;
  let v: unknown;
  if (typeof t === 'object') {
    if (typeof raw !== 'string' || !t.oneOf.includes(raw)) throw bad();
    v = raw;
  } else if (t === 'string') {
    if (typeof raw !== 'string' && typeof raw !== 'number') throw bad();
    v = String(raw);
  } else if (t === 'bool') {
    if (typeof raw === 'boolean') v = raw;
    else if (raw === 'true' || raw === '1') v = true;
    else if (raw === 'false' || raw === '0') v = false;
    else throw bad();
  } else if (t === 'numbers') {
    const parts = Array.isArray(raw) ? raw : typeof raw === 'number' ? [raw] : String(raw).split(',');
    const nums = parts.map((p) => (typeof p === 'number' ? p : Number(String(p).trim())));
    if (nums.length === 0 || nums.some((n) => !Number.isFinite(n)) || parts.some((p) => String(p).trim() === '')) throw bad();
    v = nums;
  } else {
    const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : NaN;
    if (!Number.isFinite(n) || (t === 'int' && !Number.isSafeInteger(n))) throw bad();
    v = n;
  }
  const msg = spec.check?.(v as never);
  if (msg) throw new UsageError(`${where} ${label}: ${msg} (got ${JSON.stringify(raw)})`);
  return v;
}

const canonical = (flag: string) => flag.replace(/-/g, '_');

/** Reads a YAML or JSON config file of option values (keys as the option names). */
export function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readInputFileSync(file, INPUT_CAPS.config);
  } catch (e) {
    const err = e as InputFileError;
    throw new UsageError(`--config ${file}: ${err.code ? `cannot read it (${err.code})` : err.message}`);
  }
  let doc: unknown;
  try {
    doc = file.endsWith('.json') ? JSON.parse(text) : YAML.parse(text);
  } catch (e) {
    throw new UsageError(`--config ${file}: not valid ${file.endsWith('.json') ? 'JSON' : 'YAML'}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc))
    throw new UsageError(`--config ${file}: expected a mapping of option names to values`);
  return doc as Record<string, unknown>;
}

/**
 * Option values given as a mapping (a config file's, or a section of one), checked and converted as
 * the flags are: an unknown key is named with a suggestion, a bad value with the expected type. Keys
 * may be snake_case or kebab-case (or an alias); the result has the canonical names and the specs'
 * defaults for what is not given. Errors read `${where} ${keyPrefix}${key}: ...`.
 */
export function resolveValues(values: Record<string, unknown>, specs: readonly OptionSpec[], where: string, keyPrefix = ''): Parsed {
  const byName = new Map(specs.flatMap((s) => [s.name, ...(s.aliases ?? [])].map((n) => [n, s] as const)));
  const given = new Map<string, unknown>();
  for (const [key, v] of Object.entries(values)) {
    const spec = byName.get(canonical(key));
    if (!spec)
      throw new UsageError(
        `${where}: unknown key '${keyPrefix}${key}'.${suggest(
          canonical(key),
          specs.map((s) => s.name),
        ).replace('--', '')}`,
      );
    if (v !== undefined) given.set(spec.name, convert(spec, v, where, `${keyPrefix}${spec.name}`));
  }
  const out: Parsed = {};
  for (const s of specs) {
    if (given.has(s.name)) out[s.name] = given.get(s.name);
    else if (s.default !== undefined) out[s.name] = s.default;
  }
  return out;
}

/**
 * Parses argv against the specs. Precedence: flags > config file (--config) > defaults.
 * `--flag value`, `--flag=value`, bare `--flag` / `--no-flag` for booleans.
 */
export function parseOptions(argv: readonly string[], specs: readonly OptionSpec[], command: string): Parsed {
  const byName = new Map(specs.flatMap((s) => [s.name, ...(s.aliases ?? [])].map((n) => [n, s] as const)));
  const names = specs.map((s) => s.name);
  const fromFlags: Record<string, unknown> = {};
  let configFile: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (!arg.startsWith('--')) throw new UsageError(`spinlm ${command}: unexpected argument '${arg}' (options start with --)`);
    let [flag, value] = arg.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    flag = canonical(flag);
    if (flag === 'config') {
      configFile = value ?? argv[++i];
      if (!configFile) throw new UsageError(`spinlm ${command}: --config needs a file`);
      continue;
    }
    const spec = byName.get(flag);
    const negated = !spec && flag.startsWith('no_') ? byName.get(flag.slice(3)) : undefined;
    if (negated?.type === 'bool') {
      fromFlags[negated.name] = false;
      continue;
    }
    if (!spec)
      throw new UsageError(`spinlm ${command}: unknown option --${flag}.${suggest(flag, names)} See \`spinlm ${command} --help\`.`);
    if (value === undefined) {
      if (spec.type === 'bool' && (i + 1 >= argv.length || argv[i + 1].startsWith('--'))) value = 'true';
      else value = argv[++i];
      if (value === undefined) throw new UsageError(`spinlm ${command}: --${flag} needs a value (${describeType(spec.type)})`);
    }
    fromFlags[spec.name] = convert(spec, value, `spinlm ${command}`);
  }
  const out: Parsed = {};
  const fromFile = configFile ? readConfigFile(configFile) : {};
  for (const key of Object.keys(fromFile)) {
    if (!byName.has(canonical(key)))
      throw new UsageError(`${configFile}: unknown key '${key}'.${suggest(canonical(key), names).replace('--', '')}`);
  }
  const fileValues = new Map<string, unknown>();
  for (const [key, v] of Object.entries(fromFile)) if (v !== undefined) fileValues.set(byName.get(canonical(key))!.name, v);
  for (const s of specs) {
    if (s.name in fromFlags) out[s.name] = fromFlags[s.name];
    else if (fileValues.has(s.name)) out[s.name] = convert(s, fileValues.get(s.name), configFile!);
    else if (s.default !== undefined) out[s.name] = s.default;
    else if (s.required) throw new UsageError(`spinlm ${command}: --${s.name} is required (${s.help})`);
  }
  if (configFile) out.config = configFile;
  return out;
}

export function helpText(command: string, summary: string, specs: readonly OptionSpec[], positional?: string): string {
  const lines = [
    `Usage: spinlm ${command}${positional ? ` ${positional}` : ''} [options]`,
    '',
    summary,
    '',
    'Options (snake_case or kebab-case; --config FILE reads them from YAML/JSON, flags win):',
  ];
  const width = Math.min(34, Math.max(...specs.map((s) => s.name.length + 4)));
  for (const s of specs) {
    const def =
      s.default !== undefined
        ? ` (default: ${Array.isArray(s.default) ? s.default.join(',') : String(s.default)})`
        : s.required
          ? ' (required)'
          : '';
    const type = typeof s.type === 'object' ? ` {${s.type.oneOf.join('|')}}` : '';
    const aliases = s.aliases?.length ? ` (also: ${s.aliases.map((a) => `--${a}`).join(', ')})` : '';
    lines.push(`  --${s.name.padEnd(width)} ${s.help}${type}${def}${aliases}`);
  }
  return lines.join('\n');
}

export const positive = (v: number) => (v > 0 ? null : 'must be positive');
export const nonNegative = (v: number) => (v >= 0 ? null : 'must be >= 0');
export const unitInterval = (v: number) => (v >= 0 && v <= 1 ? null : 'must be in [0, 1]');
