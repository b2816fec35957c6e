// src/data: JSONL / JSON / Parquet readers, SFT first-round pairs, malformed rows, sampling and
// splits, SPIN pair files. Every fixture is written by the test into a temp dir.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { asyncBufferFromFile, parquetMetadataAsync, parquetSchema } from 'hyparquet';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { DataError } from '../src/data/data_error.js';
import { chatListSchema, encodeParquet, stringColumnSchema } from '../src/data/parquet.js';
import { sampleItems, shuffled, splitTrainTest } from '../src/data/sample.js';
import { loadSftPairs, writeChatRows, type ChatRow, type SftPair } from '../src/data/sft.js';
import { readSpinPairs, writeSpinPairs, type SpinPair } from '../src/data/spin_pairs.js';
import type { Rng } from '../src/util/rng.js';
import { randomText, tempLeftovers, withTempDir } from './helpers/data_files.js';
import { zstdStore } from './helpers/data_zstd.js';
import { withSeed } from './helpers/random.js';

const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';

/** Random UltraChat rows: [system?] user assistant [user assistant ...]; the expected first round (a system turn kept in `messages`). */
function ultraChatRows(rng: Rng, n: number): { rows: ChatRow[]; expected: SftPair[] } {
  const rows: ChatRow[] = [];
  const expected: SftPair[] = [];
  for (let i = 0; i < n; i++) {
    const prompt = randomText(rng);
    const real = randomText(rng);
    const system = rng.int(0, 3) === 0 ? [{ role: 'system', content: randomText(rng) }] : [];
    const messages = [...system, { role: 'user', content: prompt }, { role: 'assistant', content: real }];
    for (let k = rng.int(0, 2); k > 0; k--)
      messages.push({ role: 'user', content: randomText(rng) }, { role: 'assistant', content: randomText(rng) });
    rows.push({ prompt, messages });
    expected.push(system.length ? { prompt, real, messages: [...system, { role: 'user', content: prompt }] } : { prompt, real });
  }
  return { rows, expected };
}

async function parquetCodecs(file: string): Promise<string[]> {
  const meta = await parquetMetadataAsync(await asyncBufferFromFile(file));
  return meta.row_groups.flatMap((g) => g.columns.map((c) => c.meta_data?.codec ?? '?'));
}

async function rejects(p: Promise<unknown>, file: string, pattern: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof DataError, `expected a DataError, got ${err}`);
    assert.ok(err.message.includes(file), `message does not name the file: ${err.message}`);
    assert.match(err.message, pattern);
    return true;
  });
}

describe('SFT pairs from JSONL and JSON', () => {
  test('UltraChat messages -> first round; a system turn kept before it; later rounds ignored', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const { rows, expected } = ultraChatRows(rng, rng.int(20, 60));
        const file = join(dir, 'chat.jsonl');
        await writeFile(file, jsonl(rows.map((r) => ({ prompt_id: 'x', ...r }))));
        const got = await loadSftPairs(file);
        assert.equal(got.skipped, 0);
        assert.deepEqual(got.pairs, expected);
      }),
    ));

  test('plain layouts: prompt+completion, prompt+response, instruction+output(+input); task labels kept', () =>
    withTempDir(async (dir) => {
      const file = join(dir, 'plain.jsonl');
      await writeFile(
        file,
        jsonl([
          { prompt: 'p1', completion: 'c1' },
          { prompt: 'p2', response: 'r2', task: 'add' },
          { instruction: 'i3', output: 'o3' },
          { instruction: 'i4', input: 'x4', output: 'o4' },
          { instruction: 'i5', input: '', output: 'o5' },
        ]) + '\n\n',
      );
      const { pairs } = await loadSftPairs(file);
      assert.deepEqual(pairs, [
        { prompt: 'p1', real: 'c1' },
        { prompt: 'p2', real: 'r2', task: 'add' },
        { prompt: 'i3', real: 'o3' },
        { prompt: 'i4\n\nx4', real: 'o4' },
        { prompt: 'i5', real: 'o5' },
      ]);
    }));

  test('SPIN pair files of either layout serve as SFT data (prompt + real answer), JSONL and Parquet', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const pairs = Array.from({ length: rng.int(2, 20) }, () => ({
          prompt: randomText(rng),
          real: randomText(rng),
          generated: randomText(rng),
        }));
        const expected = pairs.map((p) => ({ prompt: p.prompt, real: p.real }));
        const strings = join(dir, 'strings.jsonl');
        await writeFile(strings, jsonl(pairs));
        assert.deepEqual((await loadSftPairs(strings)).pairs, expected);
        const pq = join(dir, 'strings.parquet');
        const columns = (['real', 'generated', 'prompt'] as const).map((k) => ({ name: k, data: pairs.map((p) => p[k]) }));
        await writeFile(
          pq,
          encodeParquet(
            columns,
            columns.map((c) => stringColumnSchema(c.name)),
          ),
        );
        assert.deepEqual((await loadSftPairs(pq)).pairs, expected);
        const official = join(dir, 'official.parquet');
        await writeSpinPairs(official, pairs);
        assert.deepEqual((await loadSftPairs(official)).pairs, expected);
      }),
    ));

  test('a JSON array file, CRLF line ends and a BOM are read', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const { rows, expected } = ultraChatRows(rng, 12);
        const arr = join(dir, 'rows.json');
        await writeFile(arr, JSON.stringify(rows, null, 2));
        assert.deepEqual((await loadSftPairs(arr)).pairs, expected);
        const crlf = join(dir, 'crlf.jsonl');
        await writeFile(crlf, '\uFEFF' + rows.map((r) => JSON.stringify(r)).join('\r\n'));
        assert.deepEqual((await loadSftPairs(crlf)).pairs, expected);
        const noExt = join(dir, 'data.txt');
        await writeFile(noExt, jsonl(rows));
        assert.deepEqual((await loadSftPairs(noExt)).pairs, expected);
      }),
    ));
});

describe('SFT pairs from Parquet', () => {
  test('snappy (the writer default), several row groups, read back equal', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const { rows, expected } = ultraChatRows(rng, rng.int(30, 80));
        const file = join(dir, 'chat.parquet');
        await writeChatRows(file, rows, { rowGroupSize: 7 });
        assert.deepEqual(new Set(await parquetCodecs(file)), new Set(['SNAPPY']));
        const meta = await parquetMetadataAsync(await asyncBufferFromFile(file));
        assert.equal(meta.row_groups.length, Math.ceil(rows.length / 7));
        const got = await loadSftPairs(file);
        assert.deepEqual(got.pairs, expected);
      }),
    ));

  test('gzip and zstd pages decode (hyparquet-compressors)', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const { rows, expected } = ultraChatRows(rng, 25);
        const gz = join(dir, 'gz.parquet');
        await writeChatRows(gz, rows, { codec: 'GZIP' });
        assert.deepEqual(new Set(await parquetCodecs(gz)), new Set(['GZIP']));
        assert.deepEqual((await loadSftPairs(gz)).pairs, expected);
        const zst = join(dir, 'zstd.parquet');
        const buf = parquetWriteBuffer({
          columnData: [{ name: 'messages', data: rows.map((r) => r.messages) as never }],
          schema: [{ name: 'root', num_children: 1 }, ...chatListSchema('messages')],
          codec: 'ZSTD',
          compressors: { ZSTD: zstdStore },
        });
        await writeFile(zst, new Uint8Array(buf));
        assert.deepEqual(new Set(await parquetCodecs(zst)), new Set(['ZSTD']));
        assert.deepEqual((await loadSftPairs(zst)).pairs, expected);
      }),
    ));

  test('flat columns: prompt+response and instruction+output; extra columns ignored', () =>
    withTempDir(async (dir) => {
      const a = join(dir, 'a.parquet');
      await writeFile(
        a,
        encodeParquet(
          [
            { name: 'id', data: ['1', '2'] },
            { name: 'prompt', data: ['p1', 'p2'] },
            { name: 'response', data: ['r1', 'r2'] },
          ],
          [stringColumnSchema('id'), stringColumnSchema('prompt'), stringColumnSchema('response')],
        ),
      );
      assert.deepEqual((await loadSftPairs(a)).pairs, [
        { prompt: 'p1', real: 'r1' },
        { prompt: 'p2', real: 'r2' },
      ]);
      const b = join(dir, 'b.parquet');
      await writeFile(
        b,
        encodeParquet(
          [
            { name: 'instruction', data: ['i1'] },
            { name: 'input', data: [null] },
            { name: 'output', data: ['o1'] },
          ],
          [stringColumnSchema('instruction'), stringColumnSchema('input'), stringColumnSchema('output')],
        ),
      );
      assert.deepEqual((await loadSftPairs(b)).pairs, [{ prompt: 'i1', real: 'o1' }]);
    }));
});

describe('malformed input', () => {
  test('bad JSON, wrong types, missing turns, wrong layouts: file and line in the error', () =>
    withTempDir(async (dir) => {
      const good = {
        messages: [
          { role: 'user', content: 'hi' },
          { role: 'assistant', content: 'yo' },
        ],
      };
      const cases: [unknown | string, RegExp][] = [
        ['{"messages": [', /line 3: not valid JSON/],
        [{ messages: 'hello' }, /line 3: "messages" must be a list/],
        [
          {
            messages: [
              { role: 'user', content: 5 },
              { role: 'assistant', content: 'a' },
            ],
          },
          /line 3: "messages"\[0\]\.content must be a string/,
        ],
        [{ messages: [{ role: 'user' }] }, /content must be a string/],
        [{ messages: [null] }, /"messages"\[0\] must be an object/],
        [{ messages: [{ role: 'assistant', content: 'a' }] }, /line 3: "messages" has no user turn/],
        [{ messages: [{ role: 'user', content: 'q' }] }, /line 3: "messages" has no assistant turn/],
        [
          {
            messages: [
              { role: 'assistant', content: 'a' },
              { role: 'user', content: 'q' },
            ],
          },
          /no assistant turn after/,
        ],
        [
          {
            messages: [
              { role: 'user', content: '  ' },
              { role: 'assistant', content: 'a' },
            ],
          },
          /first user turn before the answer\) is empty/,
        ],
        [{ prompt: 'p', completion: 7 }, /"completion" must be a string/],
        [{ prompt: 'p' }, /none of the layouts.*keys: prompt/],
        [{ text: 'x' }, /none of the layouts/],
        [[1, 2], /row must be a JSON object/],
        ['42', /row must be a JSON object/],
        [{ prompt: 'p', response: 'r', task: 3 }, /"task" must be a string/],
      ];
      for (const [i, [bad, pattern]] of cases.entries()) {
        const file = join(dir, `bad${i}.jsonl`);
        const line = typeof bad === 'string' ? bad : JSON.stringify(bad);
        await writeFile(file, `${JSON.stringify(good)}\n\n${line}\n${JSON.stringify(good)}\n`);
        await rejects(loadSftPairs(file), file, pattern);
      }
    }));

  test('empty files, whitespace-only files, missing files, unknown formats', () =>
    withTempDir(async (dir) => {
      const empty = join(dir, 'empty.jsonl');
      await writeFile(empty, '');
      await rejects(loadSftPairs(empty), empty, /file is empty/);
      const blank = join(dir, 'blank.jsonl');
      await writeFile(blank, '\n  \n\n');
      await rejects(loadSftPairs(blank), blank, /no rows/);
      const emptyPq = join(dir, 'empty.parquet');
      await writeFile(emptyPq, '');
      await rejects(loadSftPairs(emptyPq), emptyPq, /file is empty/);
      const missing = join(dir, 'nope.jsonl');
      await rejects(loadSftPairs(missing), missing, /no such file/);
      await rejects(loadSftPairs(dir), dir, /not a regular file/);
      const junk = join(dir, 'junk.dat');
      await writeFile(junk, 'hello');
      await rejects(loadSftPairs(junk), junk, /cannot tell the format/);
      await rejects(loadSftPairs(junk, { format: 'csv' as never }), junk, /unknown format 'csv'/);
      const notPq = join(dir, 'fake.parquet');
      await writeFile(notPq, jsonl([{ prompt: 'p', response: 'r' }]));
      await rejects(loadSftPairs(notPq), notPq, /not a readable Parquet file|too short/);
      const badArray = join(dir, 'obj.json');
      await writeFile(badArray, '[{"prompt": "p", "response": "r"}');
      await rejects(loadSftPairs(badArray), badArray, /not valid JSON/);
    }));

  test('Parquet: missing columns listed; a bad row named by its row index across row groups', () =>
    withTempDir(async (dir) => {
      const noCols = join(dir, 'nocols.parquet');
      await writeFile(noCols, encodeParquet([{ name: 'text', data: ['a', 'b'] }], [stringColumnSchema('text')]));
      await rejects(loadSftPairs(noCols), noCols, /missing columns: expected messages.*the file has columns text/);
      const rows: ChatRow[] = Array.from({ length: 20 }, (_, i) => ({
        prompt: `p${i}`,
        messages:
          i === 13
            ? [{ role: 'user', content: `p${i}` }]
            : [
                { role: 'user', content: `p${i}` },
                { role: 'assistant', content: `a${i}` },
              ],
      }));
      const bad = join(dir, 'bad.parquet');
      await writeChatRows(bad, rows, { rowGroupSize: 6 });
      await rejects(loadSftPairs(bad), bad, /row index 13: "messages" has no assistant turn/);
      const skipped = await loadSftPairs(bad, { skipInvalid: true });
      assert.equal(skipped.skipped, 1);
      assert.equal(skipped.pairs.length, 19);
      assert.match(skipped.problems[0], /row index 13/);
    }));

  test('skipInvalid skips and counts exactly the malformed rows, keeping the rest in order', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const n = rng.int(40, 100);
        const lines: string[] = [];
        const expected: SftPair[] = [];
        let bad = 0;
        for (let i = 0; i < n; i++) {
          if (rng.next() < 0.3) {
            bad++;
            const kinds = ['{oops', '{"prompt": 1, "response": "r"}', '{"messages": [{"role": "user", "content": "q"}]}', '[]', '{"x": 1}'];
            lines.push(kinds[rng.int(0, kinds.length - 1)]);
          } else {
            const p = { prompt: randomText(rng), real: randomText(rng) };
            expected.push(p);
            lines.push(JSON.stringify({ prompt: p.prompt, completion: p.real }));
          }
        }
        if (expected.length === 0) {
          expected.push({ prompt: 'p', real: 'r' });
          lines.push(JSON.stringify({ prompt: 'p', completion: 'r' }));
        }
        const file = join(dir, 'mixed.jsonl');
        await writeFile(file, lines.join('\n'));
        const got = await loadSftPairs(file, { skipInvalid: true });
        assert.equal(got.skipped, bad);
        assert.deepEqual(got.pairs, expected);
        assert.equal(got.problems.length, Math.min(5, bad));
        for (const p of got.problems) assert.match(p, new RegExp(`${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: line \\d+: `));
        if (bad > 0) await assert.rejects(loadSftPairs(file), DataError);
        const allBad = join(dir, 'allbad.jsonl');
        await writeFile(allBad, '{oops\n[]\n');
        await rejects(loadSftPairs(allBad, { skipInvalid: true }), allBad, /no valid rows \(2 skipped/);
      }),
    ));
});

describe('sampling and splits', () => {
  test('loadSftPairs n/seed: deterministic sample, equal to sampleItems over all pairs; n alone takes the first n', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const total = rng.int(60, 150);
        const rows = Array.from({ length: total }, (_, i) => ({ prompt: `p${i}`, response: `r${i}` }));
        const file = join(dir, 'all.jsonl');
        await writeFile(file, jsonl(rows));
        const all = (await loadSftPairs(file)).pairs;
        const n = rng.int(10, 40);
        const seed = rng.int(0, 1e9);
        const a = (await loadSftPairs(file, { n, seed })).pairs;
        const b = (await loadSftPairs(file, { n, seed })).pairs;
        assert.deepEqual(a, b);
        assert.equal(a.length, n);
        assert.equal(new Set(a.map((p) => p.prompt)).size, n);
        assert.deepEqual(a, sampleItems(all, n, seed));
        const c = (await loadSftPairs(file, { n, seed: seed + 1 })).pairs;
        assert.notDeepEqual(c, a);
        assert.deepEqual((await loadSftPairs(file, { n })).pairs, all.slice(0, n));
        const perm = (await loadSftPairs(file, { seed })).pairs;
        assert.equal(perm.length, total);
        assert.notDeepEqual(perm, all);
        assert.deepEqual(perm.map((p) => p.prompt).sort(), all.map((p) => p.prompt).sort());
        await rejects(loadSftPairs(file, { n: total + 1, seed }), file, new RegExp(`n=${total + 1}.*only ${total} valid rows`));
        await assert.rejects(loadSftPairs(file, { n: 0 }), /positive integer/);
        // Parquet: same pairs, same sample
        const pq = join(dir, 'all.parquet');
        await writeChatRows(
          pq,
          all.map((p) => ({
            prompt: p.prompt,
            messages: [
              { role: 'user', content: p.prompt },
              { role: 'assistant', content: p.real },
            ],
          })),
          { rowGroupSize: 16 },
        );
        assert.deepEqual((await loadSftPairs(pq, { n, seed })).pairs, a);
      }),
    ));

  test('sampleItems is uniform: each item is chosen with probability n/N', () =>
    withSeed((rng) => {
      const N = 10;
      const n = 3;
      const trials = 20000;
      const items = Array.from({ length: N }, (_, i) => i);
      const counts = new Array(N).fill(0);
      const base = rng.int(0, 1e9);
      for (let t = 0; t < trials; t++) for (const x of sampleItems(items, n, base + t)) counts[x]++;
      const mean = (trials * n) / N;
      const sd = Math.sqrt(trials * (n / N) * (1 - n / N));
      for (const c of counts) assert.ok(Math.abs(c - mean) < 6 * sd, `inclusion counts ${counts} (expected ${mean} +- ${sd.toFixed(0)})`);
      assert.throws(() => sampleItems(items, N + 1, 1), /cannot sample/);
    }));

  test('shuffled: a deterministic permutation', () =>
    withSeed((rng) => {
      const xs = Array.from({ length: 50 }, (_, i) => i);
      const seed = rng.int(0, 1e9);
      const a = shuffled(xs, seed);
      assert.deepEqual(shuffled(xs, seed), a);
      assert.notDeepEqual(a, xs);
      assert.deepEqual(
        a.slice().sort((p, q) => p - q),
        xs,
      );
      assert.notDeepEqual(shuffled(xs, seed + 1), a);
    }));

  test('splitTrainTest: disjoint, covering, order kept, stable by seed; sizes by fraction or count', () =>
    withSeed((rng) => {
      const len = rng.int(20, 300);
      const items = Array.from({ length: len }, (_, i) => `item${i}`);
      const seed = rng.int(0, 1e9);
      const frac = 0.05 + 0.9 * rng.next();
      const { train, test: held } = splitTrainTest(items, { seed, testFraction: frac });
      assert.equal(held.length, Math.round(frac * len));
      assert.equal(train.length + held.length, len);
      const inTest = new Set(held);
      assert.equal(inTest.size, held.length);
      assert.ok(
        train.every((x) => !inTest.has(x)),
        'train and test overlap',
      );
      assert.deepEqual([...train, ...held].sort(), items.slice().sort());
      const index = (x: string) => Number(x.slice(4));
      for (const part of [train, held])
        for (let i = 1; i < part.length; i++) assert.ok(index(part[i - 1]) < index(part[i]), 'input order not kept');
      assert.deepEqual(splitTrainTest(items, { seed, testFraction: frac }), { train, test: held });
      assert.notDeepEqual(splitTrainTest(items, { seed: seed + 1, testFraction: frac }).test, held);
      const k = rng.int(1, len - 1);
      assert.equal(splitTrainTest(items, { seed, testCount: k }).test.length, k);
      assert.throws(() => splitTrainTest(items, { seed, testFraction: 1 }), /\(0, 1\)/);
      assert.throws(() => splitTrainTest(items, { seed, testCount: len }), /empty train or test/);
      assert.throws(() => splitTrainTest(items, { seed, testCount: 0 }), /empty train or test/);
      assert.throws(() => splitTrainTest(items.slice(0, 3), { seed, testFraction: 0.1 }), /empty train or test/);
      assert.throws(() => splitTrainTest(items, { seed }), /exactly one/);
      assert.throws(() => splitTrainTest(items, { seed, testCount: 1, testFraction: 0.5 }), /exactly one/);
    }));
});

describe('SPIN pair files', () => {
  function randomPairs(rng: Rng, n: number): SpinPair[] {
    return Array.from({ length: n }, () => ({
      prompt: randomText(rng),
      real: randomText(rng),
      generated: rng.int(0, 5) === 0 ? '' : randomText(rng),
    }));
  }

  test('round trip through JSONL and Parquet (snappy), no temp files left, overwrite works', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const pairs = randomPairs(rng, rng.int(20, 70));
        for (const name of ['pairs.jsonl', 'pairs.parquet']) {
          const file = join(dir, name);
          await writeSpinPairs(file, pairs.slice(0, 5));
          await writeSpinPairs(file, pairs, { rowGroupSize: 9 });
          assert.deepEqual(await readSpinPairs(file), pairs);
        }
        assert.deepEqual(new Set(await parquetCodecs(join(dir, 'pairs.parquet'))), new Set(['SNAPPY']));
        assert.deepEqual(await tempLeftovers(dir), []);
        const forced = join(dir, 'pairs.bin');
        await writeSpinPairs(forced, pairs, { format: 'parquet' });
        assert.deepEqual(await readSpinPairs(forced), pairs);
      }),
    ));

  test('the written layout is the official one: real / generated = [user, assistant] (+ prompt)', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const pairs = randomPairs(rng, 3);
        const file = join(dir, 'p.jsonl');
        await writeSpinPairs(file, pairs);
        const { readFile } = await import('node:fs/promises');
        const rows = (await readFile(file, 'utf8'))
          .trimEnd()
          .split('\n')
          .map((l) => JSON.parse(l));
        assert.deepEqual(rows[1], {
          real: [
            { role: 'user', content: pairs[1].prompt },
            { role: 'assistant', content: pairs[1].real },
          ],
          generated: [
            { role: 'user', content: pairs[1].prompt },
            { role: 'assistant', content: pairs[1].generated },
          ],
          prompt: pairs[1].prompt,
        });
        const pq = join(dir, 'p.parquet');
        await writeSpinPairs(pq, pairs);
        const schema = parquetSchema(await parquetMetadataAsync(await asyncBufferFromFile(pq)));
        assert.deepEqual(
          schema.children.map((c) => c.element.name),
          ['real', 'generated', 'prompt'],
        );
        const real = schema.children[0];
        assert.equal(real.element.converted_type, 'LIST');
        assert.deepEqual(
          real.children[0].children[0].children.map((c) => c.element.name),
          ['content', 'role'],
        );
      }),
    ));

  test('official rows without "prompt", and the older chosen/rejected keys, are read', () =>
    withTempDir(async (dir) => {
      const file = join(dir, 'official.jsonl');
      await writeFile(
        file,
        jsonl([
          {
            real: [
              { role: 'user', content: 'p' },
              { role: 'assistant', content: 'y' },
            ],
            generated: [
              { role: 'user', content: 'p' },
              { role: 'assistant', content: "y'" },
            ],
          },
          {
            chosen: [
              { role: 'user', content: 'q' },
              { role: 'assistant', content: 'z' },
            ],
            rejected: [
              { role: 'user', content: 'q' },
              { role: 'assistant', content: '' },
            ],
          },
        ]),
      );
      assert.deepEqual(await readSpinPairs(file), [
        { prompt: 'p', real: 'y', generated: "y'" },
        { prompt: 'q', real: 'z', generated: '' },
      ]);
      const arr = join(dir, 'synthetic_train.json');
      await writeFile(
        arr,
        JSON.stringify(
          [
            {
              real: [
                { role: 'user', content: 'p' },
                { role: 'assistant', content: 'y' },
              ],
              generated: [
                { role: 'user', content: 'p' },
                { role: 'assistant', content: 'g' },
              ],
            },
          ],
          null,
          4,
        ),
      );
      assert.deepEqual(await readSpinPairs(arr), [{ prompt: 'p', real: 'y', generated: 'g' }]);
    }));

  test('plain-string rows {prompt, real, generated} are read from JSONL, JSON and Parquet', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const pairs = randomPairs(rng, rng.int(5, 40));
        const file = join(dir, 'strings.jsonl');
        await writeFile(file, jsonl(pairs.map((p) => ({ prompt: p.prompt, real: p.real, generated: p.generated }))));
        assert.deepEqual(await readSpinPairs(file), pairs);
        const arr = join(dir, 'strings.json');
        await writeFile(arr, JSON.stringify(pairs.map((p) => ({ chosen: p.real, rejected: p.generated, prompt: p.prompt }))));
        assert.deepEqual(await readSpinPairs(arr), pairs);
        const pq = join(dir, 'strings.parquet');
        const columns = (['prompt', 'real', 'generated'] as const).map((k) => ({ name: k, data: pairs.map((p) => p[k]) }));
        await writeFile(
          pq,
          encodeParquet(
            columns,
            columns.map((c) => stringColumnSchema(c.name)),
            { rowGroupSize: rng.int(1, 7) },
          ),
        );
        assert.deepEqual(await readSpinPairs(pq), pairs);
      }),
    ));

  test('a file mixing the two layouts is an error naming the first row of the other layout', () =>
    withSeed(async (rng) =>
      withTempDir(async (dir) => {
        const pairs = randomPairs(rng, rng.int(3, 30));
        const k = rng.int(1, pairs.length - 1);
        const asStrings = (p: SpinPair) => ({ prompt: p.prompt, real: p.real, generated: p.generated });
        const asMessages = (p: SpinPair) => ({
          real: [
            { role: 'user', content: p.prompt },
            { role: 'assistant', content: p.real },
          ],
          generated: [
            { role: 'user', content: p.prompt },
            { role: 'assistant', content: p.generated },
          ],
        });
        for (const [first, other] of [
          [asStrings, asMessages],
          [asMessages, asStrings],
        ] as const) {
          const rows = pairs.map((p, i) => (i === k ? other(p) : first(p)));
          const file = join(dir, 'mixed.jsonl');
          await writeFile(file, jsonl(rows));
          await rejects(
            readSpinPairs(file),
            file,
            new RegExp(`line ${k + 1}: this row uses .* but the file's first row \\(line 1\\) uses .*one layout per file`),
          );
          const arr = join(dir, 'mixed.json');
          await writeFile(arr, JSON.stringify(rows));
          await rejects(readSpinPairs(arr), arr, new RegExp(`row index ${k}: this row uses`));
        }
        const noPrompt = join(dir, 'noprompt.jsonl');
        await writeFile(noPrompt, jsonl([{ real: pairs[0].real, generated: pairs[0].generated }]));
        await rejects(readSpinPairs(noPrompt), noPrompt, /line 1: "prompt" must be a string/);
      }),
    ));

  test('inconsistent or incomplete pair rows are errors naming file and line', () =>
    withTempDir(async (dir) => {
      const u = (c: string) => ({ role: 'user', content: c });
      const a = (c: string) => ({ role: 'assistant', content: c });
      const cases: [unknown, RegExp][] = [
        [{ real: [u('p'), a('y')], generated: [u('other'), a('g')] }, /different user prompts/],
        [{ real: [u('p'), a('y')], generated: [u('p'), a('g')], prompt: 'x' }, /"prompt" differs/],
        [{ real: [u('p'), a('y')] }, /needs "real" and "generated"/],
        [{ real: [u('p')], generated: [u('p'), a('g')] }, /"real" has no assistant turn/],
        [{ real: [u('p'), a('')], generated: [u('p'), a('g')] }, /first assistant turn\) is empty/],
        [{ real: [u('p'), a('y')], generated: 'g' }, /"generated" must be a list/],
      ];
      for (const [i, [bad, pattern]] of cases.entries()) {
        const file = join(dir, `bad${i}.jsonl`);
        await writeFile(file, jsonl([{ real: [u('ok'), a('ok')], generated: [u('ok'), a('ok')] }, bad]));
        await rejects(readSpinPairs(file), file, new RegExp(`line 2: .*${pattern.source}`));
      }
      const pq = join(dir, 'nocols.parquet');
      await writeFile(pq, encodeParquet([{ name: 'prompt', data: ['p'] }], [stringColumnSchema('prompt')]));
      await rejects(readSpinPairs(pq), pq, /needs "real" and "generated"; the file has prompt/);
      await assert.rejects(writeSpinPairs(join(dir, 'none.jsonl'), []), /no SPIN pairs/);
      await assert.rejects(
        writeSpinPairs(join(dir, 'bad.jsonl'), [{ prompt: 'p', real: 'r', generated: 3 as never }]),
        /pair 0: "generated" must be a string/,
      );
      await assert.rejects(
        writeSpinPairs(join(dir, 'bad.jsonl'), [{ real: [u('p'), a('y')], generated: [u('q'), a('g')] }]),
        /pair 0: .*different user prompts/,
      );
      const fromRows = join(dir, 'rows.parquet');
      await writeSpinPairs(fromRows, [{ real: [u('p'), a('y')], generated: [u('p'), a('')] }]);
      assert.deepEqual(await readSpinPairs(fromRows), [{ prompt: 'p', real: 'y', generated: '' }]);
    }));
});
