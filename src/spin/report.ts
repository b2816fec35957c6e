// A report a person can open after a run: report.html with inline SVG plots (training loss, reward
// margins and accuracies per step, one line per arm, iteration boundaries marked; the evaluation per
// iteration) and report.md with the numbers.
import { writeFileAtomic } from '../util/atomic.js';
import type { MetricsRow } from './metrics.js';

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22', '#17becf'];
/** Series past the palette repeat its colors with dashes (then dots), so up to 30 stay apart. */
const dashOf = (i: number) => ['', ' stroke-dasharray="6 3"', ' stroke-dasharray="2 2"'][Math.floor(i / COLORS.length) % 3];

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function niceTicks(lo: number, hi: number, n = 5): number[] {
  if (!(hi > lo)) return [lo];
  const step0 = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(step0));
  const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= step0) ?? step0;
  const out: number[] = [];
  // by index, not by repeated addition (which leaves -2.8e-17 where 0 belongs)
  for (let i = Math.ceil(lo / step); i * step <= hi + 1e-12; i++) out.push(i === 0 ? 0 : Number((i * step).toPrecision(6)));
  return out;
}

export interface Series {
  name: string;
  points: [number, number][];
  /** Error bars: half-widths, one per point (drawn as y +- e; a missing or non-finite one draws none). */
  errors?: number[];
}

/** One line chart as an SVG string. */
export function lineChart(
  title: string,
  xLabel: string,
  series: Series[],
  opts: { marks?: number[]; width?: number; height?: number } = {},
): string {
  const W = opts.width ?? 560,
    H = opts.height ?? 300,
    L = 64,
    R = 130,
    T = 30,
    B = 44;
  const bar = (s: Series, i: number) => (Number.isFinite(s.errors?.[i]) ? Math.abs(s.errors![i]) : 0);
  const pts = series
    .flatMap((s) => s.points.flatMap(([x, y], i) => [[x, y - bar(s, i)] as const, [x, y + bar(s, i)] as const]))
    .filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  if (pts.length === 0)
    return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}"><text x="10" y="20">${esc(title)}: no data</text></svg>`;
  const x0 = Math.min(...pts.map((p) => p[0]));
  let x1 = Math.max(...pts.map((p) => p[0]));
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) x1 = x0 + 1;
  if (y1 === y0) [y0, y1] = [y0 - 1, y1 + 1];
  const pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  const sx = (x: number) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const sy = (y: number) => H - B - ((y - y0) / (y1 - y0)) * (H - T - B);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`,
    `<text x="${L}" y="18" font-size="13" font-weight="bold">${esc(title)}</text>`,
  ];
  parts.push(`<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#999"/>`);
  for (const t of niceTicks(y0, y1))
    parts.push(
      `<line x1="${L - 4}" x2="${W - R}" y1="${sy(t)}" y2="${sy(t)}" stroke="#eee"/><text x="${L - 6}" y="${sy(t) + 4}" text-anchor="end">${t}</text>`,
    );
  for (const t of niceTicks(x0, x1))
    parts.push(
      `<line x1="${sx(t)}" x2="${sx(t)}" y1="${H - B}" y2="${H - B + 4}" stroke="#999"/><text x="${sx(t)}" y="${H - B + 16}" text-anchor="middle">${t}</text>`,
    );
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">${esc(xLabel)}</text>`);
  for (const m of opts.marks ?? [])
    if (m > x0 && m < x1) parts.push(`<line x1="${sx(m)}" x2="${sx(m)}" y1="${T}" y2="${H - B}" stroke="#bbb" stroke-dasharray="4 3"/>`);
  series.forEach((s, i) => {
    const c = COLORS[i % COLORS.length];
    const good = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
    if (good.length === 0) return;
    s.points.forEach(([x, y], k) => {
      const e = bar(s, k);
      if (e > 0 && Number.isFinite(x) && Number.isFinite(y)) {
        const [px, lo, hi] = [sx(x).toFixed(1), sy(y - e).toFixed(1), sy(y + e).toFixed(1)];
        parts.push(
          `<path d="M${px},${lo}V${hi}M${(sx(x) - 3).toFixed(1)},${lo}h6M${(sx(x) - 3).toFixed(1)},${hi}h6" stroke="${c}" stroke-width="1.2" fill="none"/>`,
        );
      }
    });
    parts.push(
      `<polyline fill="none" stroke="${c}" stroke-width="1.6"${dashOf(i)} points="${good.map(([x, y]) => `${sx(x).toFixed(1)},${sy(y).toFixed(1)}`).join(' ')}"/>`,
    );
    if (good.length <= 12)
      for (const [x, y] of good) parts.push(`<circle cx="${sx(x).toFixed(1)}" cy="${sy(y).toFixed(1)}" r="3" fill="${c}"/>`);
    parts.push(
      `<line x1="${W - R + 10}" x2="${W - R + 28}" y1="${T + 10 + i * 16}" y2="${T + 10 + i * 16}" stroke="${c}" stroke-width="2"${dashOf(i)}/><text x="${W - R + 32}" y="${T + 14 + i * 16}">${esc(s.name)}</text>`,
    );
  });
  parts.push('</svg>');
  return parts.join('\n');
}

/** A row of a forest plot: an estimate with its interval. */
export interface Estimate {
  name: string;
  value: number;
  /** Half-width of the interval drawn around value (not drawn when not finite). */
  halfWidth: number;
}

/**
 * A forest plot as an SVG string: one row per estimate (a dot and its interval), a vertical line at
 * 0; rows whose interval lies wholly right of 0 are green, wholly left red, across 0 grey.
 */
export function forestChart(title: string, xLabel: string, rows: readonly Estimate[], opts: { width?: number } = {}): string {
  const W = opts.width ?? 640,
    L = 150,
    R = 20,
    T = 30,
    B = 44,
    rowH = 18;
  const H = T + B + Math.max(1, rows.length) * rowH;
  const ends = rows.flatMap((r) => {
    const h = Number.isFinite(r.halfWidth) ? r.halfWidth : 0;
    return [r.value - h, r.value + h];
  });
  let [x0, x1] = [Math.min(0, ...ends), Math.max(0, ...ends)];
  if (x1 === x0) [x0, x1] = [x0 - 1, x1 + 1];
  const pad = (x1 - x0) * 0.05;
  x0 -= pad;
  x1 += pad;
  const sx = (x: number) => L + ((x - x0) / (x1 - x0)) * (W - L - R);
  const parts = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">`,
    `<text x="10" y="18" font-size="13" font-weight="bold">${esc(title)}</text>`,
    `<rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#999"/>`,
  ];
  for (const t of niceTicks(x0, x1))
    parts.push(
      `<line x1="${sx(t)}" x2="${sx(t)}" y1="${T}" y2="${H - B + 4}" stroke="#eee"/><text x="${sx(t)}" y="${H - B + 16}" text-anchor="middle">${t}</text>`,
    );
  parts.push(`<line x1="${sx(0)}" x2="${sx(0)}" y1="${T}" y2="${H - B}" stroke="#555"/>`);
  parts.push(`<text x="${(L + W - R) / 2}" y="${H - 8}" text-anchor="middle">${esc(xLabel)}</text>`);
  rows.forEach((r, i) => {
    const y = T + (i + 0.5) * rowH;
    const h = Number.isFinite(r.halfWidth) ? r.halfWidth : 0;
    const c = r.value - h > 0 ? '#2ca02c' : r.value + h < 0 ? '#d62728' : '#7f7f7f';
    parts.push(`<text x="${L - 6}" y="${y + 4}" text-anchor="end">${esc(r.name)}</text>`);
    if (h > 0)
      parts.push(
        `<line x1="${sx(r.value - h).toFixed(1)}" x2="${sx(r.value + h).toFixed(1)}" y1="${y}" y2="${y}" stroke="${c}" stroke-width="2"/>`,
      );
    parts.push(`<circle cx="${sx(r.value).toFixed(1)}" cy="${y}" r="3.5" fill="${c}"/>`);
  });
  parts.push('</svg>');
  return parts.join('\n');
}

/** Rows of the evaluation table: arm x iteration -> metrics. */
export function evalTable(rows: readonly MetricsRow[], columns: readonly string[]): string {
  const evals = rows.filter((r) => r.kind === 'eval');
  const arms = [...new Set(evals.map((r) => r.arm ?? 'run'))];
  const iters = [...new Set(evals.map((r) => r.iteration))].sort((a, b) => a - b);
  const head = ['iteration', ...arms.flatMap((a) => columns.map((c) => `${a} ${c}`))];
  const lines = [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  for (const it of iters) {
    const cells = arms.flatMap((a) =>
      columns.map((c) => {
        const r = evals.find((e) => (e.arm ?? 'run') === a && e.iteration === it);
        const v = r?.[c];
        return typeof v === 'number' ? v.toFixed(4) : '';
      }),
    );
    lines.push(`| ${it} | ${cells.join(' | ')} |`);
  }
  return lines.join('\n');
}

/** Writes report.html and report.md for the metrics of a run (one or several arms). */
export async function writeReport(
  dir: string,
  rows: readonly MetricsRow[],
  opts: { title: string; evalColumns: string[]; notes?: string },
): Promise<void> {
  const steps = rows.filter((r) => r.kind === 'step');
  const arms = [...new Set(steps.map((r) => r.arm ?? 'run'))];
  // a global step axis per arm: iterations laid end to end
  const xOf = new Map<MetricsRow, number>();
  const marks = new Set<number>();
  for (const a of arms) {
    let offset = 0;
    let lastIter = -1;
    let lastStep = 0;
    for (const r of steps.filter((s) => (s.arm ?? 'run') === a)) {
      if (r.iteration !== lastIter) {
        offset += lastStep;
        if (lastIter >= 0) marks.add(offset);
        lastIter = r.iteration;
      }
      lastStep = Number(r.step);
      xOf.set(r, offset + Number(r.step));
    }
  }
  const stepSeries = (key: string) =>
    arms.map((a) => ({
      name: a,
      points: steps
        .filter((r) => (r.arm ?? 'run') === a && typeof r[key] === 'number')
        .map((r) => [xOf.get(r)!, r[key] as number] as [number, number]),
    }));
  const evals = rows.filter((r) => r.kind === 'eval');
  const evalArms = [...new Set(evals.map((r) => r.arm ?? 'run'))];
  const evalSeries = (key: string) =>
    evalArms.map((a) => ({
      name: a,
      points: evals
        .filter((r) => (r.arm ?? 'run') === a && typeof r[key] === 'number')
        .map((r) => [r.iteration, r[key] as number] as [number, number]),
    }));
  const charts = [
    lineChart('Training loss', 'optimizer step (iterations end to end)', stepSeries('loss'), { marks: [...marks] }),
    lineChart('rewards/margins', 'optimizer step', stepSeries('rewards/margins'), { marks: [...marks] }),
    lineChart('rewards/accuracies', 'optimizer step', stepSeries('rewards/accuracies'), { marks: [...marks] }),
    ...opts.evalColumns.map((c) => lineChart(`Held-out ${c} per iteration`, 'iteration', evalSeries(c))),
  ];
  const table = evalTable(rows, opts.evalColumns);
  // a run without evaluations (sft, train) says what it trained instead of an empty table
  const [heading, body] = evals.length ? ['Evaluation per iteration', table] : ['Training', trainingSummary(steps, arms)];
  const md = [`# ${opts.title}`, '', opts.notes ?? '', '', `## ${heading}`, '', body, ''].join('\n');
  const html = [
    '<!doctype html><html><head><meta charset="utf-8"><title>' + esc(opts.title) + '</title>',
    '<style>body{font-family:sans-serif;max-width:1200px;margin:2em auto} .charts{display:flex;flex-wrap:wrap;gap:12px} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}</style></head><body>',
    `<h1>${esc(opts.title)}</h1>`,
    opts.notes ? `<p>${esc(opts.notes)}</p>` : '',
    '<div class="charts">',
    ...charts,
    `</div><h2>${heading}</h2>`,
    markdownTableToHtml(body),
    '</body></html>',
  ].join('\n');
  await writeFileAtomic(`${dir}/report.html`, html);
  await writeFileAtomic(`${dir}/report.md`, md);
}

/** Per arm: optimizer steps and the training loss of the first and the last step, as a markdown table. */
function trainingSummary(steps: readonly MetricsRow[], arms: readonly string[]): string {
  const lines = ['| arm | optimizer steps | first loss | last loss |', '| --- | --- | --- | --- |'];
  const fmt = (v: unknown) => (typeof v === 'number' ? v.toFixed(4) : '');
  for (const a of arms) {
    const mine = steps.filter((r) => (r.arm ?? 'run') === a);
    lines.push(`| ${a} | ${mine.length} | ${fmt(mine[0]?.loss)} | ${fmt(mine.at(-1)?.loss)} |`);
  }
  return lines.join('\n');
}

function markdownTableToHtml(md: string): string {
  const lines = md.split('\n').filter((l) => l.startsWith('|'));
  const cells = (l: string) =>
    l
      .slice(1, -1)
      .split('|')
      .map((c) => esc(c.trim()));
  const [head, , ...body] = lines;
  return `<table><tr>${cells(head)
    .map((c) => `<th>${c}</th>`)
    .join('')}</tr>${body
    .map(
      (l) =>
        `<tr>${cells(l)
          .map((c) => `<td>${c}</td>`)
          .join('')}</tr>`,
    )
    .join('')}</table>`;
}
