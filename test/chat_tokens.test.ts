// Chats into tokens (docs/algorithm.md, "Chats into tokens") over published tokenizers: chat
// rendering against Python's jinja2 (transformers' settings), system turns, multi-turn rows, the
// answer's own end of turn, the one-tokenization boundary, refusals, the empty system turn, the
// fixed template date, where the template comes from, and the ids that stop generation.
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { runTemplateDate } from '../src/cli/run_dir.js';
import { readSpinPairs } from '../src/data/spin_pairs.js';
import { stopIdsOf } from '../src/generate/stops.js';
import { collateSpinBatch } from '../src/spin/batch.js';
import { tokenizePairs } from '../src/spin/score.js';
import { type ChatMessage, formatPrompt, renderChatTemplate } from '../src/text/templates.js';
import { type HfTokenizer, loadTokenizer } from '../src/text/tokenizer.js';
import type { Rng } from '../src/util/rng.js';
import {
  LLAMA32_TEMPLATE,
  MISTRAL_INSTRUCT_TEMPLATE,
  publishedConfig,
  publishedDir,
  tokenizerDirWith,
  ZEPHYR_TEMPLATE,
} from './helpers/published_tokenizers.js';
import { pythonWith, runPython } from './helpers/python.js';
import { withSeed } from './helpers/random.js';

const ORACLE = new URL('./oracle/render_chat.py', import.meta.url).pathname;
const TRUNC = { maxLength: 4096, maxPromptLength: 2048, batchSize: 1 };
const jsonl = (rows: unknown[]) => rows.map((r) => JSON.stringify(r)).join('\n') + '\n';

let root = '';
const tok: Record<string, HfTokenizer> = {};
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'spinlm-chat-'));
  tok.llama3 = await loadTokenizer(publishedDir('llama3'));
  tok.llama3_1 = await loadTokenizer(publishedDir('llama3_1'));
  tok.qwen3 = await loadTokenizer(publishedDir('qwen3'));
  tok.zephyr = await loadTokenizer(await tokenizerDirWith('mistral', join(root, 'zephyr'), ZEPHYR_TEMPLATE));
  tok.mistral = await loadTokenizer(await tokenizerDirWith('mistral', join(root, 'mistral'), MISTRAL_INSTRUCT_TEMPLATE));
  tok.llama32 = await loadTokenizer(await tokenizerDirWith('llama3_1', join(root, 'llama32'), LLAMA32_TEMPLATE));
  tok.gemma3 = await loadTokenizer(publishedDir('gemma3')); // eos <end_of_turn>
  // google/gemma-3-*-it's tokenizer_config.json says eos <eos> (1): the turn's <end_of_turn> (106) is not EOS
  tok.gemma3it = await loadTokenizer(await tokenizerDirWith('gemma3', join(root, 'gemma3it'), undefined, { eos_token: '<eos>' }));
});
after(() => rm(root, { recursive: true, force: true }));

const WORDS = [
  'Hello',
  ' world',
  '!',
  ' The',
  ' 2+2',
  '=4.',
  '\n',
  ' café',
  ' 中文',
  ' 😀',
  ' "quoted"',
  ' {json}',
  '  two  spaces',
  ' end.',
];
function text(rng: Rng): string {
  let s = '';
  for (let n = rng.int(1, 8); n > 0; n--) s += WORDS[rng.int(0, WORDS.length - 1)];
  return s.trim() === '' ? 'x' : s;
}
/** [system?] user assistant (user assistant)*: `rounds` rounds. */
function conversation(rng: Rng, rounds: number, system: boolean): ChatMessage[] {
  const m: ChatMessage[] = system ? [{ role: 'system', content: text(rng) }] : [];
  for (let r = 0; r < rounds; r++) m.push({ role: 'user', content: text(rng) }, { role: 'assistant', content: text(rng) });
  return m;
}

describe('chat rendering equals Python jinja2 with transformers settings', () => {
  test('llama3, llama3_1, qwen3, gemma3 (published), Mistral Instruct, zephyr, Llama 3.2 dates; system and multi-turn rows', () =>
    withSeed(async (rng) => {
      const templates: { name: string; template: string; bos: string | null; eos: string; system: boolean }[] = [];
      for (const f of ['llama3', 'llama3_1', 'qwen3', 'gemma3'] as const) {
        const c = await publishedConfig(f);
        templates.push({ name: f, template: c.template!, bos: c.bos, eos: c.eos, system: true });
      }
      templates.push({ name: 'mistral', template: MISTRAL_INSTRUCT_TEMPLATE, bos: '<s>', eos: '</s>', system: false });
      templates.push({ name: 'zephyr', template: ZEPHYR_TEMPLATE, bos: '<s>', eos: '</s>', system: true });
      templates.push({ name: 'llama3.2', template: LLAMA32_TEMPLATE, bos: '<|begin_of_text|>', eos: '<|eot_id|>', system: true });
      const cases = [];
      for (const t of templates) {
        for (let k = 0; k < 6; k++) {
          const messages = conversation(rng, rng.int(1, 3), t.system && rng.int(0, 1) === 1);
          const genPrompt = rng.int(0, 1) === 1;
          if (genPrompt) messages.pop(); // end with a user turn
          const date = `20${rng.int(10, 39)}-${String(rng.int(1, 12)).padStart(2, '0')}-${String(rng.int(1, 28)).padStart(2, '0')}`;
          cases.push({
            name: t.name,
            template: t.template,
            messages,
            add_generation_prompt: genPrompt,
            bos_token: t.bos,
            eos_token: t.eos,
            date,
          });
        }
      }
      // Gemma 3 folds the system text, empty too (the official SPIN's empty system turn), into the first user turn
      const g = templates.find((t) => t.name === 'gemma3')!;
      for (const content of ['', ' Be brief. '])
        cases.push({
          name: 'gemma3 system fold',
          template: g.template,
          messages: [{ role: 'system', content }, ...conversation(rng, 2, false)],
          add_generation_prompt: false,
          bos_token: g.bos,
          eos_token: g.eos,
          date: '2026-01-02',
        });
      const file = join(root, 'cases.json');
      await writeFile(file, JSON.stringify(cases));
      const want = JSON.parse(runPython(ORACLE, [file], { python: pythonWith('jinja2') })) as string[];
      cases.forEach((c, i) => {
        const got = renderChatTemplate(c.template, c.messages, {
          addGenerationPrompt: c.add_generation_prompt,
          bosToken: c.bos_token,
          eosToken: c.eos_token,
          date: c.date,
        });
        assert.equal(got, want[i], `${c.name} case ${i}: ${JSON.stringify(c.messages)}`);
      });
    }));
});

describe('chat rows into prompt and answer tokens', () => {
  const pairFile = async (name: string, rows: unknown[]) => {
    const f = join(root, name);
    await writeFile(f, jsonl(rows));
    return f;
  };

  test('a system turn is kept in the prompt (score, train, generate read pairs alike)', async () => {
    const user = { role: 'user', content: 'What is 2+2?' };
    const sys = { role: 'system', content: 'Answer in French.' };
    const rows = (withSystem: boolean) => [
      {
        real: [...(withSystem ? [sys] : []), user, { role: 'assistant', content: 'Four.' }],
        generated: [...(withSystem ? [sys] : []), user, { role: 'assistant', content: '4' }],
      },
    ];
    for (const name of ['llama3_1', 'qwen3', 'zephyr']) {
      const t = tok[name];
      const a = tokenizePairs(t, await readSpinPairs(await pairFile(`s0-${name}.jsonl`, rows(false)), { rounds: 'last' }), {
        ...TRUNC,
        template: 'chat',
      });
      const b = tokenizePairs(t, await readSpinPairs(await pairFile(`s1-${name}.jsonl`, rows(true)), { rounds: 'last' }), {
        ...TRUNC,
        template: 'chat',
      });
      assert.notDeepEqual(a[0].real.prompt, b[0].real.prompt, `${name}: the system turn changed nothing`);
      assert.ok(t.decode(b[0].real.prompt).includes('Answer in French.'), name);
      assert.deepEqual(a[0].real.answer, b[0].real.answer, name);
    }
  });

  test('multi-turn rows: the prompt is every turn before the last answer; first_round_only gives the official first round', async () => {
    const msgs = (last: string) => [
      { role: 'user', content: 'Name a fruit.' },
      { role: 'assistant', content: 'Apple.' },
      { role: 'user', content: 'Another one?' },
      { role: 'assistant', content: last },
    ];
    const file = await pairFile('multi.jsonl', [{ real: msgs('Pear.'), generated: msgs('Plum.') }]);
    const t = tok.llama3_1;
    const [last] = tokenizePairs(t, await readSpinPairs(file, { rounds: 'last' }), { ...TRUNC, template: 'chat' });
    const prompt = t.decode(last.real.prompt);
    assert.ok(
      prompt.includes('Apple.') && prompt.endsWith('Another one?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n'),
      prompt,
    );
    assert.equal(t.decode(last.real.answer), 'Pear.<|eot_id|>');
    assert.equal(t.decode(last.generated.answer), 'Plum.<|eot_id|>');
    const [first] = tokenizePairs(t, await readSpinPairs(file, { rounds: 'first' }), { ...TRUNC, template: 'chat' });
    assert.ok(!t.decode(first.real.prompt).includes('Apple.'));
    assert.equal(t.decode(first.real.answer), 'Apple.<|eot_id|>');
  });

  test("the answer is the template's assistant turn with its end of turn; EOS only when that does not end with it", () => {
    const pair = [{ prompt: 'Hi', real: 'Hello there.', generated: '' }];
    const ends = (name: string) => {
      const t = tok[name];
      const [p] = tokenizePairs(t, pair, { ...TRUNC, template: 'chat' });
      return { real: t.decode(p.real.answer), generated: t.decode(p.generated.answer) };
    };
    // Llama 3.1 Instruct: eos is <|eot_id|>, the turn's own end: once (TRL appends a second one)
    assert.deepEqual(ends('llama3_1'), { real: 'Hello there.<|eot_id|>', generated: '<|eot_id|>' });
    // Llama 3 base files: eos <|end_of_text|> follows the turn's <|eot_id|>
    assert.deepEqual(ends('llama3'), { real: 'Hello there.<|eot_id|><|end_of_text|>', generated: '<|eot_id|><|end_of_text|>' });
    // Qwen3: eos <|im_end|> ends the turn; the template's newline after it is part of the rendering
    assert.equal(ends('qwen3').real, '<think>\n\n</think>\n\nHello there.<|im_end|>\n');
    // zephyr: the turn ends "</s>\n" (eos once; TRL doubles </s>); this SentencePiece vocabulary
    // writes the newline after a special token as "▁" + "<0x0A>", which decodes to " \n"
    assert.equal(ends('zephyr').real, 'Hello there.</s> \n');
    // Llama 3 base files: the template writes the next assistant header after every conversation; the answer stops at its turn's end
    assert.equal(ends('llama3').real, 'Hello there.<|eot_id|><|end_of_text|>');
    assert.equal(ends('mistral').real, 'Hello there.</s>');
    // Gemma 3: the turn ends "<end_of_turn>\n"; with the -it files' eos <eos>, EOS follows it (TRL's layout)
    assert.deepEqual(ends('gemma3'), { real: 'Hello there.<end_of_turn>\n', generated: '<end_of_turn>\n' });
    assert.deepEqual(ends('gemma3it'), { real: 'Hello there.<end_of_turn>\n<eos>', generated: '<end_of_turn>\n<eos>' });
  });

  test('one tokenization split where the prompt ends: prompt + answer are the ids of the rendered conversation; BOS never doubled', () =>
    withSeed((rng) => {
      for (const name of ['llama3_1', 'llama3', 'qwen3', 'zephyr', 'mistral', 'llama32', 'gemma3', 'gemma3it']) {
        const t = tok[name];
        for (let k = 0; k < 8; k++) {
          const conv = conversation(rng, rng.int(1, 3), name !== 'mistral' && rng.int(0, 1) === 1);
          const real = conv.pop()!.content;
          const src = { prompt: conv[conv.length - 1].content, messages: conv };
          const [p] = tokenizePairs(t, [{ ...src, real, generated: text(rng) }], {
            ...TRUNC,
            template: { kind: 'chat', date: '2026-01-02' },
          });
          const full = t.encode(
            renderChatTemplate(t.chatTemplate!, [...conv, { role: 'assistant', content: real }], {
              bosToken: t.bosToken,
              eosToken: t.eosToken,
              date: '2026-01-02',
            }),
          );
          const ids = [...p.real.prompt, ...p.real.answer];
          // all but an appended EOS are the conversation's ids; only the Llama 3 base template writes more
          // after the answer (an unconditional next assistant header, not part of the turn)
          const n = ids[ids.length - 1] === t.eosId && full[ids.length - 1] !== t.eosId ? ids.length - 1 : ids.length;
          const where = `${name}: ${JSON.stringify(conv)} -> ${JSON.stringify(real)}`;
          assert.deepEqual(ids.slice(0, n), full.slice(0, n), where);
          assert.ok(
            n === full.length || (name === 'llama3' && t.decode(full.slice(n)) === '<|start_header_id|>assistant<|end_header_id|>\n\n'),
            where,
          );
          if (t.bosId !== null) assert.ok(ids.filter((id) => id === t.bosId).length <= 1, `${name}: doubled BOS`);
        }
      }
      // Mistral Instruct's "[/INST]" is followed by the answer with no space: the boundary falls where the template puts it
      const t = tok.mistral;
      const [p] = tokenizePairs(t, [{ prompt: 'Say hi', real: 'Hi!', generated: 'Hello' }], { ...TRUNC, template: 'chat' });
      assert.equal(t.decode(p.real.prompt), '<s> [INST] Say hi [/INST]');
      assert.equal(t.decode(p.real.answer), 'Hi!</s>');
      assert.equal(p.real.prompt.filter((id) => id === t.bosId).length, 1);
    }));

  test("EOS ids inside a chat row stay attended (Llama 3.1 Instruct's eos is every turn's <|eot_id|>); the instruction template keeps the official mask", () => {
    const t = tok.llama3_1;
    const pair = {
      prompt: 'Q2',
      messages: [
        { role: 'system', content: 'S' },
        { role: 'user', content: 'Q1' },
        { role: 'assistant', content: 'A1' },
        { role: 'user', content: 'Q2' },
      ],
      real: 'A2',
      generated: 'B2',
    };
    const chat = collateSpinBatch(tokenizePairs(t, [pair], { ...TRUNC, template: 'chat' }), t.eosId, 0);
    const row0 = [...chat.inputIds.subarray(0, chat.length)];
    assert.ok(row0.filter((id) => id === t.eosId).length >= 4); // the turns' ends, in the prompt and the answer
    for (let i = 0; i < chat.length; i++) if (row0[i] === t.eosId) assert.equal(chat.attentionMask[i], 1, `<|eot_id|> at ${i} masked`);
    const official = collateSpinBatch(
      tokenizePairs(t, [{ prompt: 'Q<|eot_id|>', real: 'A', generated: 'B' }], { ...TRUNC, template: 'instruction' }),
      t.eosId,
      0,
    );
    const inText = [...official.inputIds.subarray(0, official.length)].indexOf(t.eosId);
    assert.equal(official.attentionMask[inText], 0);
  });

  test('a template whose prompt is not a prefix of the conversation is refused, naming the row', async () => {
    const dir = await tokenizerDirWith(
      'qwen3',
      join(root, 'think'),
      "{% for m in messages %}{% if m['role'] == 'assistant' %}<|im_start|>assistant\n{{ m['content'] }}<|im_end|>\n{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}",
    );
    const t = await loadTokenizer(dir);
    const pairs = [
      { prompt: 'a', real: 'b', generated: 'c' },
      { prompt: 'd', real: 'e', generated: 'f' },
    ];
    assert.throws(
      () => tokenizePairs(t, pairs, { ...TRUNC, template: 'chat' }),
      /^ChatSplitError: pair 1: the chat template renders the prompt .*does not begin the conversation/,
    );
  });

  test('no empty system turn unless asked (the official SPIN inserts one)', () => {
    const t = tok.qwen3;
    const plain = formatPrompt(t, 'chat', 'Hi');
    const official = formatPrompt(t, { kind: 'chat', emptySystemTurn: true }, 'Hi');
    assert.equal(plain, '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    assert.equal(official, '<|im_start|>system\n<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
    // a row with its own system turn gets no second one
    const withSystem = formatPrompt(
      t,
      { kind: 'chat', emptySystemTurn: true },
      {
        prompt: 'Hi',
        messages: [
          { role: 'system', content: 'S' },
          { role: 'user', content: 'Hi' },
        ],
      },
    );
    assert.equal(withSystem, '<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n');
  });

  test("Gemma 3: <bos> once, from the template; the system text folded into the first user turn; the assistant is 'model'", () => {
    const [t, it] = [tok.gemma3, tok.gemma3it];
    const sys = { role: 'system', content: 'Be brief.' };
    const chat = (messages: ChatMessage[]) => ({ prompt: messages[messages.length - 1].content, messages });
    assert.equal(formatPrompt(t, 'chat', 'Hi'), '<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n');
    const multi = chat([sys, { role: 'user', content: 'Q1' }, { role: 'assistant', content: 'A1' }, { role: 'user', content: 'Q2' }]);
    assert.equal(
      formatPrompt(t, 'chat', multi),
      '<bos><start_of_turn>user\nBe brief.\n\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n',
    );
    // the official SPIN's empty system turn becomes an empty prefix ("" + "\n\n") of the first user turn
    assert.equal(
      formatPrompt(t, { kind: 'chat', emptySystemTurn: true }, 'Hi'),
      '<bos><start_of_turn>user\n\n\nHi<end_of_turn>\n<start_of_turn>model\n',
    );
    for (const k of [t, it]) {
      const [p] = tokenizePairs(k, [{ ...multi, real: 'A2', generated: 'B2' }], { ...TRUNC, template: 'chat' });
      // <bos> <start_of_turn> user \n ...: the tokenizer's add_bos_token does not add a second <bos>
      assert.deepEqual(p.real.prompt.slice(0, 2), [2, 105]);
      assert.equal(p.real.prompt.filter((id) => id === 2).length, 1);
      assert.equal(k.decode(p.real.answer), k === t ? 'A2<end_of_turn>\n' : 'A2<end_of_turn>\n<eos>');
    }
    // a row whose roles do not alternate is refused by the template itself (raise_exception)
    assert.throws(
      () =>
        formatPrompt(
          t,
          'chat',
          chat([
            { role: 'user', content: 'a' },
            { role: 'user', content: 'b' },
          ]),
        ),
      /Conversation roles must alternate/,
    );
  });

  test("a template that reads the date (Llama 3.2's strftime_now) sees the run's day, not the calendar", () => {
    const t = tok.llama32;
    const a = formatPrompt(t, { kind: 'chat', date: '2025-02-03' }, 'Hi');
    assert.ok(a.includes('Today Date: 03 Feb 2025\n'), a);
    assert.equal(formatPrompt(t, { kind: 'chat', date: '2025-02-03' }, 'Hi'), a);
    assert.ok(formatPrompt(t, { kind: 'chat', date: '2031-12-25' }, 'Hi').includes('Today Date: 25 Dec 2031\n'));
  });
});

describe("the run's template day", () => {
  test("--template_date wins; a resume takes fingerprint.json's day; a new run or --overwrite_output_dir takes today", async () => {
    const dir = join(root, 'run-day');
    await mkdir(dir, { recursive: true });
    const today = new Date().toISOString().slice(0, 10);
    assert.equal(runTemplateDate(dir, { out: dir }), today);
    await writeFile(
      join(dir, 'fingerprint.json'),
      JSON.stringify({ command: 'run', options: {}, inputs: {}, template_date: '2024-07-26' }),
    );
    assert.equal(runTemplateDate(dir, { out: dir }), '2024-07-26');
    assert.equal(runTemplateDate(dir, { out: dir, template_date: '2025-01-01' }), '2025-01-01');
    assert.equal(runTemplateDate(dir, { out: dir, overwrite_output_dir: true }), today);
  });
});

describe('where the chat template comes from', () => {
  test('chat_template.jinja, else chat_template.json, else tokenizer_config.json (transformers)', async () => {
    const dir = await tokenizerDirWith('mistral', join(root, 'precedence'), '{{ "config" }}');
    assert.equal((await loadTokenizer(dir)).chatTemplate, '{{ "config" }}');
    await writeFile(join(dir, 'chat_template.json'), JSON.stringify({ chat_template: '{{ "json" }}' }));
    let t = await loadTokenizer(dir);
    assert.equal(t.chatTemplate, '{{ "json" }}');
    assert.equal(t.chatTemplateFile, 'chat_template.json');
    await writeFile(join(dir, 'chat_template.jinja'), '{{ "jinja" }}');
    t = await loadTokenizer(dir);
    assert.equal(t.chatTemplate, '{{ "jinja" }}');
    assert.equal(t.chatTemplateFile, 'chat_template.jinja');
    await writeFile(join(dir, 'chat_template.jinja'), '');
    await rm(join(dir, 'chat_template.jinja'));
    await writeFile(join(dir, 'chat_template.json'), '{"chat_template": 3}');
    await assert.rejects(loadTokenizer(dir), /chat_template\.json: "chat_template" must be a string/);
  });
});

describe('the ids that stop generation', () => {
  test('config.json and generation_config.json eos_token_id (int or list), the tokenizer EOS, the template end of turn', async () => {
    const dir = join(root, 'stops');
    await tokenizerDirWith('llama3', dir);
    const t = await loadTokenizer(dir);
    // Meta-Llama-3-8B-Instruct: config.json eos 128009 (as updated), generation_config.json [128001, 128009]
    assert.deepEqual(await stopIdsOf(dir, [128009], t, 'chat'), [128001, 128009]);
    await writeFile(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [128001, 128008, 128009] }));
    assert.deepEqual(await stopIdsOf(dir, [128001], t, 'instruction'), [128001, 128008, 128009]);
    await writeFile(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: 128008 }));
    assert.deepEqual(await stopIdsOf(dir, [], t, 'chat'), [128001, 128008, 128009]);
    // the template's end of turn, for every published family
    assert.deepEqual(await stopIdsOf(join(root, 'none'), [], tok.qwen3, 'chat'), [151645]);
    assert.deepEqual(await stopIdsOf(join(root, 'none'), [], tok.zephyr, 'chat'), [2]);
    assert.deepEqual(await stopIdsOf(join(root, 'none'), [], tok.gemma3, 'chat'), [106]);
    // gemma-3-*-it: config.json eos [1, 106]; with only eos 1 known, <end_of_turn> still stops (the template's end of turn)
    assert.deepEqual(await stopIdsOf(join(root, 'none'), [1], tok.gemma3it, 'chat'), [1, 106]);
    assert.deepEqual(await stopIdsOf(join(root, 'none'), [1], tok.gemma3it, 'instruction'), [1]);
    await writeFile(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [128001, 'x'] }));
    await assert.rejects(stopIdsOf(dir, [], t, 'chat'), /generation_config\.json: "eos_token_id"\[1\] must be a token id/);
  });
});
