// src/text/tokenizer.ts and src/text/templates.ts over a real byte-level HF tokenizer
// (src/text/byte_tokenizer.ts): round trips, special tokens, chat templates, errors.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SPIN_INSTRUCTION_TEMPLATE, chatGenerationPrompt, instructionPrompt, renderChatTemplate } from '../src/text/templates.js';
import { TokenizerError, loadTokenizer } from '../src/text/tokenizer.js';
import type { Rng } from '../src/util/rng.js';
import { BOS_ID, BYTE_OFFSET, BYTE_VOCAB_SIZE, EOS_ID, ZEPHYR_CHAT_TEMPLATE, writeByteTokenizer } from '../src/text/byte_tokenizer.js';
import { withSeed } from './helpers/random.js';

let root = '';
let n = 0;
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'spinlm-tok-'));
});
after(async () => {
  await rm(root, { recursive: true, force: true });
});

async function freshDir(): Promise<string> {
  const d = join(root, `t${n++}`);
  await mkdir(d);
  return d;
}

// Code point ranges: controls and ASCII, Latin-1, combining marks, Greek/Cyrillic, CJK, the BMP's
// private use area and specials, emoji and other astral planes (surrogates excluded: not UTF-8).
const RANGES: [number, number][] = [
  [0x00, 0x7f],
  [0x80, 0xff],
  [0x300, 0x36f],
  [0x370, 0x4ff],
  [0x4e00, 0x9fff],
  [0xe000, 0xfffd],
  [0x1f300, 0x1faff],
  [0x10000, 0x10ffff],
];

function randomUnicode(rng: Rng, maxLen: number): string {
  let s = '';
  for (let i = rng.int(1, maxLen); i > 0; i--) {
    const [lo, hi] = RANGES[rng.int(0, RANGES.length - 1)];
    s += String.fromCodePoint(rng.int(lo, hi));
  }
  return s;
}

async function expectTokError(p: Promise<unknown>, file: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(err instanceof TokenizerError, `expected a TokenizerError, got ${String(err)}`);
    assert.ok(err.message.includes(file), `message names ${file}: ${err.message}`);
    assert.match(err.message, re);
    return true;
  });
}

describe('loadTokenizer over a byte-level tokenizer', () => {
  test('random unicode strings: one id per UTF-8 byte, in range, decode gives the string back', () =>
    withSeed(async (rng) => {
      const dir = await freshDir();
      await writeByteTokenizer(dir);
      const tok = await loadTokenizer(dir);
      assert.equal(tok.vocabSize, BYTE_VOCAB_SIZE);
      const enc = new TextEncoder();
      for (let i = 0; i < 200; i++) {
        const s = randomUnicode(rng, 40);
        const ids = tok.encode(s);
        const bytes = enc.encode(s);
        assert.deepEqual(
          ids,
          Array.from(bytes, (b) => BYTE_OFFSET + b),
          `ids of ${JSON.stringify(s)}`,
        );
        assert.ok(ids.every((id) => id >= 0 && id < tok.vocabSize));
        assert.equal(tok.decode(ids), s);
      }
      assert.deepEqual(tok.encode(''), []);
      assert.equal(tok.decode([]), '');
      assert.equal(tok.decode(Int32Array.from(tok.encode('ok'))), 'ok');
    }));

  test('special tokens: ids, strings inside text, skipping on decode, {content} objects', () =>
    withSeed(async (rng) => {
      for (const tokenObjects of [false, true]) {
        const dir = await freshDir();
        await writeByteTokenizer(dir, { tokenObjects });
        const tok = await loadTokenizer(dir);
        assert.equal(tok.eosId, EOS_ID);
        assert.equal(tok.bosId, BOS_ID);
        assert.equal(tok.eosToken, '</s>');
        assert.equal(tok.bosToken, '<s>');
        assert.equal(tok.chatTemplate, null);
        const body = randomUnicode(rng, 10);
        const bodyIds = tok.encode(body);
        assert.deepEqual(tok.encode(`<s>${body}</s>`), [BOS_ID, ...bodyIds, EOS_ID]);
        assert.equal(tok.decode([BOS_ID, ...bodyIds, EOS_ID]), `<s>${body}</s>`);
        assert.equal(tok.decode([BOS_ID, ...bodyIds, EOS_ID], { skipSpecialTokens: true }), body);
        assert.equal(tok.idToToken(EOS_ID), '</s>');
        assert.equal(tok.tokenToId('<s>'), BOS_ID);
      }
    }));

  test('decode refuses ids that are not tokens', () =>
    withSeed(async (rng) => {
      const dir = await freshDir();
      await writeByteTokenizer(dir);
      const tok = await loadTokenizer(dir);
      const file = join(dir, 'tokenizer.json');
      for (const bad of [BYTE_VOCAB_SIZE + rng.int(0, 1000), -1, 1.5]) {
        assert.throws(
          () => tok.decode([BYTE_OFFSET + 65, bad]),
          (e: Error) => e instanceof TokenizerError && e.message.includes(file) && /ids\[1\]/.test(e.message),
        );
      }
    }));

  test('ids with gaps load as the tokenizers library takes them: encode unchanged, gap ids listed, refused by decode and by name', () =>
    withSeed(async (rng) => {
      // Rust tokenizers (so transformers) accepts any ids: a gap is never encoded, and its decode
      // drops gap ids silently; spinlm lists them (gapIds, never sampled) and decode refuses them.
      // Before: "Cannot read properties of undefined (reading 'length')" while loading, no file named.
      const far = 300 + rng.int(0, 5000);
      const shift = rng.int(1, 50);
      const text = 'gaps & ids: ünï 字';
      for (const kind of ['added token far out', 'vocabulary entry far out', 'vocabulary not starting at 0'] as const) {
        const dir = await freshDir();
        await writeByteTokenizer(dir);
        const file = join(dir, 'tokenizer.json');
        const tj = JSON.parse(await readFile(file, 'utf8'));
        let gaps: number[];
        if (kind === 'added token far out') {
          tj.added_tokens.push({ ...tj.added_tokens[0], id: far, content: '<far>' });
          gaps = Array.from({ length: far - BYTE_VOCAB_SIZE }, (_, i) => BYTE_VOCAB_SIZE + i);
        } else if (kind === 'vocabulary entry far out') {
          tj.model.vocab.farpiece = far;
          gaps = Array.from({ length: far - BYTE_VOCAB_SIZE }, (_, i) => BYTE_VOCAB_SIZE + i);
        } else {
          tj.model.vocab = Object.fromEntries(Object.entries(tj.model.vocab as Record<string, number>).map(([k, id]) => [k, id + shift]));
          tj.added_tokens = tj.added_tokens.map((t: { id: number }) => ({ ...t, id: t.id + shift }));
          gaps = Array.from({ length: shift }, (_, i) => i);
        }
        await writeFile(file, JSON.stringify(tj));
        const tok = await loadTokenizer(dir);
        const top = kind === 'vocabulary not starting at 0' ? BYTE_VOCAB_SIZE + shift : far + 1;
        assert.equal(tok.vocabSize, top, kind);
        assert.deepEqual(tok.gapIds, gaps, kind);
        const ids = tok.encode(text);
        const off = kind === 'vocabulary not starting at 0' ? shift : 0;
        assert.deepEqual(
          ids,
          Array.from(new TextEncoder().encode(text), (b) => BYTE_OFFSET + off + b),
          kind,
        );
        assert.equal(tok.decode(ids), text);
        if (kind === 'added token far out') assert.deepEqual(tok.encode('a<far>'), [BYTE_OFFSET + 97, far]);
        assert.throws(
          () => tok.decode([ids[0], gaps[rng.int(0, gaps.length - 1)]]),
          (e: Error) => e instanceof TokenizerError && e.message.includes(file) && /ids\[1\] = \d+ is not a token id/.test(e.message),
        );
      }
      // only added tokens, with gaps: refused as an empty vocabulary, naming the file
      const dir = await freshDir();
      await writeByteTokenizer(dir);
      const file = join(dir, 'tokenizer.json');
      const tj = JSON.parse(await readFile(file, 'utf8'));
      tj.model.vocab = {};
      tj.added_tokens = tj.added_tokens.map((t: { id: number }, i: number) => ({ ...t, id: 3 * i + 5 }));
      await writeFile(file, JSON.stringify(tj));
      await expectTokError(loadTokenizer(dir), file, /the vocabulary is empty \(only the added tokens <pad>, <s>, <\/s>, <unk>\)/);
    }));

  test('missing or malformed files', async () => {
    const dir = await freshDir();
    const tokFile = join(dir, 'tokenizer.json');
    const cfgFile = join(dir, 'tokenizer_config.json');
    await expectTokError(loadTokenizer(dir), tokFile, /not found/);
    await writeByteTokenizer(dir);
    const goodCfg = JSON.parse(await readFile(cfgFile, 'utf8'));
    const goodTok = JSON.parse(await readFile(tokFile, 'utf8'));

    await rm(cfgFile);
    await expectTokError(loadTokenizer(dir), cfgFile, /not found/);
    await writeFile(cfgFile, '{"eos_token": ');
    await expectTokError(loadTokenizer(dir), cfgFile, /not valid JSON/);
    await writeFile(cfgFile, '[]');
    await expectTokError(loadTokenizer(dir), cfgFile, /expected a JSON object/);
    await writeFile(cfgFile, JSON.stringify({ ...goodCfg, eos_token: undefined }));
    await expectTokError(loadTokenizer(dir), cfgFile, /"eos_token" is missing/);
    await writeFile(cfgFile, JSON.stringify({ ...goodCfg, eos_token: '<|end|>' }));
    await expectTokError(loadTokenizer(dir), cfgFile, /eos_token "<\|end\|>" is not in the vocabulary/);
    await writeFile(cfgFile, JSON.stringify({ ...goodCfg, bos_token: 5 }));
    await expectTokError(loadTokenizer(dir), cfgFile, /"bos_token" must be a string/);
    await writeFile(cfgFile, JSON.stringify({ ...goodCfg, chat_template: 3 }));
    await expectTokError(loadTokenizer(dir), cfgFile, /"chat_template" must be/);
    await writeFile(cfgFile, JSON.stringify(goodCfg));

    const { model: _, ...noModel } = goodTok;
    await writeFile(tokFile, JSON.stringify(noModel));
    await expectTokError(loadTokenizer(dir), tokFile, /has no "model" object/);
    await writeFile(tokFile, JSON.stringify({ ...goodTok, model: { ...goodTok.model, type: 'NoSuchModel' } }));
    await expectTokError(loadTokenizer(dir), tokFile, /model type "NoSuchModel" is not supported/);
    await writeFile(tokFile, JSON.stringify({ ...goodTok, decoder: undefined }));
    await expectTokError(loadTokenizer(dir), tokFile, /cannot build a tokenizer from it \(.*"decoder"/);
    await writeFile(tokFile, 'not json');
    await expectTokError(loadTokenizer(dir), tokFile, /not valid JSON/);
  });
});

describe('templates', () => {
  test('instruction template: the official SPIN format, verbatim prompt, encodes and decodes exactly', () =>
    withSeed(async (rng) => {
      const dir = await freshDir();
      await writeByteTokenizer(dir);
      const tok = await loadTokenizer(dir);
      for (let i = 0; i < 20; i++) {
        const p = randomUnicode(rng, 30);
        const prompt = instructionPrompt(p);
        assert.equal(prompt, `### Instruction: ${p}\n\n### Response: `);
        assert.equal(
          prompt,
          SPIN_INSTRUCTION_TEMPLATE.replace('{prompt}', () => p),
        );
        assert.equal(tok.decode(tok.encode(prompt)), prompt);
      }
    }));

  test('zephyr chat template: generation prompt and a multi-turn conversation', () =>
    withSeed(async (rng) => {
      const dir = await freshDir();
      await writeByteTokenizer(dir, { chatTemplate: ZEPHYR_CHAT_TEMPLATE });
      const tok = await loadTokenizer(dir);
      assert.equal(tok.chatTemplate, ZEPHYR_CHAT_TEMPLATE);
      const user = randomUnicode(rng, 20);
      const prompt = chatGenerationPrompt(tok, user);
      assert.equal(prompt, `<|user|>\n${user}</s>\n<|assistant|>\n`);
      const ids = tok.encode(prompt);
      assert.equal(ids.filter((id) => id === EOS_ID).length, 1 + (user.includes('</s>') ? 1 : 0), 'the eos string becomes the eos id');
      assert.equal(tok.decode(ids), prompt);

      const [sys, a] = [randomUnicode(rng, 10), randomUnicode(rng, 10)];
      const convo = [
        { role: 'system', content: sys },
        { role: 'user', content: user },
        { role: 'assistant', content: a },
      ];
      assert.equal(
        renderChatTemplate(ZEPHYR_CHAT_TEMPLATE, convo, { eosToken: '</s>' }),
        `<|system|>\n${sys}</s>\n<|user|>\n${user}</s>\n<|assistant|>\n${a}</s>\n`,
      );
    }));

  test('bos_token variable, chat_template.jinja override, named template list, errors', () =>
    withSeed(async (rng) => {
      const llamaLike =
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}[INST] {{ m['content'] | trim }} [/INST]{% endif %}{% endfor %}";
      const dir = await freshDir();
      await writeByteTokenizer(dir, {
        chatTemplate: [
          { name: 'tool_use', template: 'x' },
          { name: 'default', template: llamaLike },
        ] as unknown as string,
      });
      const tok = await loadTokenizer(dir);
      const user = `hi ${rng.int(0, 1e6)}`;
      const prompt = chatGenerationPrompt(tok, `  ${user} `);
      assert.equal(prompt, `<s>[INST] ${user} [/INST]`);
      assert.equal(tok.encode(prompt)[0], BOS_ID);

      await writeFile(
        join(dir, 'chat_template.jinja'),
        '{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}{% if add_generation_prompt %}<bot>{% endif %}',
      );
      const tok2 = await loadTokenizer(dir);
      assert.equal(chatGenerationPrompt(tok2, user), `<user>${user}<bot>`);

      const plain = await freshDir();
      await writeByteTokenizer(plain);
      const noTemplate = await loadTokenizer(plain);
      assert.throws(() => chatGenerationPrompt(noTemplate, 'x'), /has no chat_template; use the instruction template/);
      assert.throws(
        () => renderChatTemplate('{% for m in messages %}', [{ role: 'user', content: 'x' }], { source: 'bad.json' }),
        /^Error: bad.json: cannot render the chat template/,
      );
      assert.throws(
        () =>
          renderChatTemplate("{{ raise_exception('roles must alternate') }}", [{ role: 'user', content: 'x' }], { source: 'strict.json' }),
        /strict.json: .*roles must alternate/,
      );
    }));
});
