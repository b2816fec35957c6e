"""Renders chat templates the way transformers' apply_chat_template does (an independent renderer
for spinlm's @huggingface/jinja rendering): jinja2's ImmutableSandboxedEnvironment with
trim_blocks and lstrip_blocks, loopcontrols, the tojson filter, raise_exception and a strftime_now
that reports a fixed day (transformers uses the wall clock; spinlm fixes one day per run).

argv[1]: a JSON file with a list of {template, messages, add_generation_prompt, bos_token, eos_token, date};
stdout: a JSON list of rendered strings.
"""
import datetime
import json
import sys

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def render(case):
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    day = datetime.datetime.strptime(case["date"], "%Y-%m-%d")

    def strftime_now(fmt):
        return day.strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(case["template"]).render(
        messages=case["messages"],
        add_generation_prompt=case["add_generation_prompt"],
        bos_token=case["bos_token"],
        eos_token=case["eos_token"],
    )


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        cases = json.load(f)
    json.dump([render(c) for c in cases], sys.stdout, ensure_ascii=False)


if __name__ == "__main__":
    main()
