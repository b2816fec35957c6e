// Multi-step word problems and their derivation grammar (issue 31): three kinds of short problems
// with one checkable final answer, each with a probabilistic grammar over its solutions (step order,
// the form of each intermediate step, whether a quantity is restated, the final phrasing).
// src/data/word_teacher.ts turns a grammar into a teacher with an exact likelihood; docs/science.md
// ("Second study") says why the real answer must be one sample of a rich distribution.
import type { Rng } from '../util/rng.js';

/** A problem: its kind and integer parameters. The key `${kind}:${params}` names it uniquely. */
export interface WordProblem {
  kind: WordProblemKind;
  params: readonly number[];
}

export const WORD_PROBLEM_KINDS = ['wp_shop', 'wp_units', 'wp_time'] as const;
export type WordProblemKind = (typeof WORD_PROBLEM_KINDS)[number];

export const WORD_PROBLEM_DESCRIPTIONS: Record<WordProblemKind, string> = {
  wp_shop: 'total cost of two purchases, a*p + b*q (two products, then a sum; either order)',
  wp_units: 'a length, weight or duration in two units, minus a part, in the small unit (convert, add, subtract)',
  wp_time: 'arrival time h:mm of a trip (hours and minutes with a carry, or all in minutes)',
};

/** One segment of a derivation: alternatives with their probabilities (summing to 1). "" = nothing. */
export type Segment = readonly (readonly [text: string, p: number])[];
/** A derivation order: its probability and its segments, joined by one space (empty ones skipped). */
export interface Order {
  p: number;
  segments: readonly Segment[];
}

const NAMES = ['Ann', 'Bob', 'Cal', 'Dee', 'Eva', 'Finn', 'Gus', 'Hal', 'Ivy', 'Jo', 'Kim', 'Lee', 'Max', 'Ned', 'Ola', 'Pat'];
const ITEMS = ['pens', 'books', 'cups', 'plates', 'apples', 'pears', 'hats', 'socks', 'maps', 'pies', 'kites', 'bowls'];
const VEHICLES = ['bus', 'train', 'ship', 'plane'];
/** wp_units: [big unit, small unit, small units per big one]; promptOf has one sentence per pair. */
const UNITS: readonly (readonly [string, string, number])[] = [
  ['m', 'cm', 100],
  ['kg', 'g', 1000],
  ['h', 'min', 60],
];

const cap = (s: string) => s[0].toUpperCase() + s.slice(1);
const pad2 = (m: number) => String(m).padStart(2, '0');
const clock = (h: number, m: number) => `${h}:${pad2(m)}`;
/** Uniform alternatives. */
const uni = (...texts: string[]): Segment => texts.map((t) => [t, 1 / texts.length] as const);
const FINAL_P = [0.4, 0.3, 0.3];
const finals = (...texts: string[]): Segment => texts.map((t, i) => [t, FINAL_P[i]] as const);

/** The problem's prompt (<= 80 characters, checked by the tests). */
export function promptOf(pr: WordProblem): string {
  const q = pr.params;
  switch (pr.kind) {
    case 'wp_shop':
      return `${NAMES[q[0]]} buys ${q[2]} ${ITEMS[q[1]]} at $${q[3]} each and ${q[4]} ${ITEMS[q[5]]} at $${q[6]} each. Total cost?`;
    case 'wp_units': {
      const [u, m, c, k] = q;
      const [big, small] = UNITS[u];
      if (u === 0) return `A rope is ${m} ${big} ${c} ${small} long. ${NAMES[q[4]]} cuts off ${k} ${small}. How many ${small} are left?`;
      if (u === 1) return `A bag holds ${m} ${big} ${c} ${small} of rice. ${NAMES[q[4]]} uses ${k} ${small}. How many ${small} are left?`;
      return `A job takes ${m} ${big} ${c} ${small}. ${NAMES[q[4]]} has done ${k} ${small}. How many ${small} remain?`;
    }
    case 'wp_time':
      return `A ${VEHICLES[q[0]]} leaves at ${clock(q[1], q[2])}. The ride takes ${q[3]} h ${q[4]} min. When does it arrive?`;
  }
}

/** The checked final answer, computed directly (an integer, or h:mm for wp_time). */
export function answerOf(pr: WordProblem): string {
  const q = pr.params;
  switch (pr.kind) {
    case 'wp_shop':
      return String(q[2] * q[3] + q[4] * q[6]);
    case 'wp_units':
      return String(q[1] * UNITS[q[0]][2] + q[2] - q[3]);
    case 'wp_time': {
      const t = q[1] * 60 + q[2] + q[3] * 60 + q[4];
      return clock(Math.floor(t / 60), t % 60);
    }
  }
}

export const keyOf = (pr: WordProblem): string => `${pr.kind}:${pr.params.join(',')}`;

/** A random problem of `kind`; every parameter in its range. */
export function drawProblem(kind: WordProblemKind, rng: Rng): WordProblem {
  switch (kind) {
    case 'wp_shop': {
      const i1 = rng.int(0, ITEMS.length - 1);
      let i2 = rng.int(0, ITEMS.length - 2);
      if (i2 >= i1) i2++;
      return { kind, params: [rng.int(0, NAMES.length - 1), i1, rng.int(2, 6), rng.int(2, 12), rng.int(2, 6), i2, rng.int(2, 12)] };
    }
    case 'wp_units': {
      const u = rng.int(0, UNITS.length - 1);
      const step = [1, 100, 1][u]; // kg: whole hundreds of g
      const c = step * rng.int(1, Math.floor((UNITS[u][2] - 1) / step));
      const k = [5, 100, 5][u] * rng.int(1, [19, 9, 11][u]);
      return { kind, params: [u, rng.int(1, 5), c, k, rng.int(0, NAMES.length - 1)] };
    }
    case 'wp_time':
      return { kind, params: [rng.int(0, VEHICLES.length - 1), rng.int(5, 18), rng.int(0, 59), rng.int(1, 4), 5 * rng.int(1, 11)] };
  }
}

/** Parses a prompt back into its problem (null if it is no word problem's prompt). */
export function problemFromPrompt(prompt: string): WordProblem | null {
  const n = (s: string) => Number(s);
  let m = /^(\w+) buys (\d+) (\w+) at \$(\d+) each and (\d+) (\w+) at \$(\d+) each\. Total cost\?$/.exec(prompt);
  if (m) {
    const pr: WordProblem = {
      kind: 'wp_shop',
      params: [NAMES.indexOf(m[1]), ITEMS.indexOf(m[3]), n(m[2]), n(m[4]), n(m[5]), ITEMS.indexOf(m[6]), n(m[7])],
    };
    return promptOf(pr) === prompt && !pr.params.includes(-1) ? pr : null;
  }
  m = /^A (?:rope is|bag holds|job takes) (\d+) (\w+) (\d+) \w+(?: long| of rice)?\. (\w+) (?:cuts off|uses|has done) (\d+) /.exec(prompt);
  if (m) {
    const u = UNITS.findIndex((x) => x[0] === m![2]);
    const pr: WordProblem = { kind: 'wp_units', params: [u, n(m[1]), n(m[3]), n(m[5]), NAMES.indexOf(m[4])] };
    return u >= 0 && !pr.params.includes(-1) && promptOf(pr) === prompt ? pr : null;
  }
  m = /^A (\w+) leaves at (\d+):(\d\d)\. The ride takes (\d+) h (\d+) min\. When does it arrive\?$/.exec(prompt);
  if (m) {
    const pr: WordProblem = { kind: 'wp_time', params: [VEHICLES.indexOf(m[1]), n(m[2]), n(m[3]), n(m[4]), n(m[5])] };
    return pr.params[0] >= 0 && promptOf(pr) === prompt ? pr : null;
  }
  return null;
}

/** The problem's derivation grammar: orders of segments, each segment a choice among forms. */
export function grammarOf(pr: WordProblem): Order[] {
  const q = pr.params;
  switch (pr.kind) {
    case 'wp_shop': {
      const [who, i1, a, p, b, i2, c] = q;
      const [x, y, s] = [a * p, b * c, a * p + b * c];
      const product = (item: string, n: number, price: number, v: number): Segment[] => [
        uni('', `${cap(item)}:`),
        [
          [`${n}*${price}=${v}.`, 0.4],
          [`${price}*${n}=${v}.`, 0.3],
          [`${v} (${n} times ${price}).`, 0.2],
          [`${n} at $${price} is $${v}.`, 0.1],
        ],
      ];
      const sum = uni(`${x}+${y}=${s}.`, `${y}+${x}=${s}.`, `Total: ${s}.`);
      const fin = finals(`Answer: ${s}`, `So ${NAMES[who]} pays $${s}.`, `#### ${s}`);
      const first = product(ITEMS[i1], a, p, x);
      const second = product(ITEMS[i2], b, c, y);
      return [
        { p: 0.6, segments: [...first, ...second, sum, fin] },
        { p: 0.4, segments: [...second, ...first, sum, fin] },
      ];
    }
    case 'wp_units': {
      const [u, m, c, k] = q;
      const [big, small, f] = UNITS[u];
      const [X, T, r] = [m * f, m * f + c, m * f + c - k];
      const convert = uni(`${m} ${big} = ${X} ${small}.`, `${m}*${f}=${X}.`, `${m} ${big} is ${X} ${small}.`);
      const fin = finals(`Answer: ${r}`, `So ${r} ${small}.`, `#### ${r}`);
      return [
        {
          p: 0.7,
          segments: [
            convert,
            uni(`${X}+${c}=${T}.`, `${c}+${X}=${T}.`, `In all ${T} ${small}.`),
            uni(`${T}-${k}=${r}.`, `${r} (${T} minus ${k}).`),
            fin,
          ],
        },
        { p: 0.3, segments: [convert, uni(`${X}-${k}=${X - k}.`), uni(`${X - k}+${c}=${r}.`, `${c}+${X - k}=${r}.`), fin] },
      ];
    }
    case 'wp_time': {
      const [, h, mm, dh, dm] = q;
      const M = mm + dm;
      const carry = M >= 60 ? 1 : 0;
      const H = h + dh + carry;
      const end = clock(H, M % 60);
      const fin = finals(`Answer: ${end}`, `It arrives at ${end}.`, `#### ${end}`);
      const minutes = uni(`${mm}+${dm}=${M}.`, `${dm}+${mm}=${M}.`);
      const carrySeg = carry ? uni(`${M} min is 1 h ${M - 60} min.`, `${M}-60=${M - 60}, carry 1 h.`) : uni('');
      const [T1, D] = [h * 60 + mm, dh * 60 + dm];
      const orders: Order[] = [
        {
          p: 0.4,
          segments: [uni(`${h}+${dh}=${h + dh}.`, `${clock(h, mm)} plus ${dh} h is ${clock(h + dh, mm)}.`), minutes, carrySeg, fin],
        },
        {
          p: 0.3,
          segments: [minutes, carrySeg, carry ? uni(`${h}+${dh}+1=${H}.`, `${h}+1+${dh}=${H}.`) : uni(`${h}+${dh}=${H}.`), fin],
        },
        {
          p: 0.3,
          segments: [
            uni(`${clock(h, mm)} is ${T1} min.`, `${h}*60+${mm}=${T1}.`),
            uni(`${dh}*60+${dm}=${D}.`, `The ride is ${D} min.`),
            uni(`${T1}+${D}=${T1 + D}.`),
            uni(`${T1 + D} min is ${end}.`),
            fin,
          ],
        },
      ];
      return orders;
    }
  }
}
