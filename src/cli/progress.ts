// Progress for long work: a cli-progress bar with rate and ETA on a terminal, a plain line every few
// seconds otherwise (CI logs), nothing when quiet. The library reports through callbacks; only the CLI draws.
import cliProgress from 'cli-progress';

export interface ProgressBar {
  update(done: number, extra?: Record<string, string | number>): void;
  stop(): void;
}

export function progressBar(label: string, total: number, unit: string, opts: { quiet?: boolean } = {}): ProgressBar {
  if (opts.quiet) return { update: () => {}, stop: () => {} };
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      {
        format: `${label.padEnd(22)} [{bar}] {value}/{total} ${unit} | {rate}/s | ETA {eta_formatted} {info}`,
        stream: process.stderr,
        hideCursor: true,
        etaBuffer: 20,
      },
      cliProgress.Presets.shades_classic,
    );
    const t0 = Date.now();
    bar.start(total, 0, { rate: '-', info: '' });
    return {
      update: (done, extra = {}) =>
        bar.update(done, {
          rate: (done / Math.max(1e-3, (Date.now() - t0) / 1000)).toFixed(1),
          info: Object.entries(extra)
            .map(([k, v]) => `${k} ${v}`)
            .join(' '),
          ...extra,
        }),
      stop: () => bar.stop(),
    };
  }
  let last = 0;
  const t0 = Date.now();
  return {
    update: (done, extra = {}) => {
      const now = Date.now();
      if (now - last < 5000 && done < total) return;
      last = now;
      const s = (now - t0) / 1000;
      const eta = done > 0 ? ((total - done) * s) / done : NaN;
      const info = Object.entries(extra)
        .map(([k, v]) => `${k} ${v}`)
        .join(' ');
      process.stderr.write(
        `${label}: ${done}/${total} ${unit} (${(done / Math.max(s, 1e-3)).toFixed(1)}/s, ETA ${Number.isFinite(eta) ? eta.toFixed(0) : '?'} s) ${info}\n`,
      );
    },
    stop: () => {},
  };
}
