// Errors for data files: always name the file, and the line (JSONL, 1-based) or row index
// (Parquet / JSON array, 0-based) when one row is at fault.

export class DataError extends Error {
  /** `where` is e.g. "line 12" or "row index 11"; null when the whole file is at fault. */
  constructor(
    readonly file: string,
    readonly where: string | null,
    readonly problem: string,
  ) {
    super(where === null ? `${file}: ${problem}` : `${file}: ${where}: ${problem}`);
    this.name = 'DataError';
  }
}

/** What is wrong with one row, before the reader adds the file and location. */
export class RowProblem extends Error {
  constructor(problem: string) {
    super(problem);
    this.name = 'RowProblem';
  }
}

/** A short, single-line rendering of a bad value for error messages. */
export function preview(value: unknown, max = 60): string {
  let s: string;
  try {
    s = value === undefined ? 'undefined' : (JSON.stringify(value) ?? String(value));
  } catch {
    s = String(value);
  }
  return s.length > max ? `${s.slice(0, max)}...` : s;
}
