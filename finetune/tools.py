"""Function-call data laid out for each chat template: chatglm3, glm4, chatml/qwen, and default/llama2.

The tool descriptions join the system message and each function call is written as the model writes it,
in LLaMA-Factory's tool formats (src/llamafactory/data/tool_utils.py), which its chatglm3, glm4 and qwen
templates train with: GLM-4's for chatglm3 and glm4 (`name\\narguments`), Qwen's for chatml and qwen
(`<tool_call>{"name", "arguments"}</tool_call>`), and the default (`Action: name\\nAction Input: {...}`) that
LLaMA-Factory's default and llama2 templates use. Tool results are `observation` messages already.
"""

from __future__ import annotations

import json
from dataclasses import replace

from finetune.conversation import Conversation
from finetune.errors import FinetuneError
from llm.types import Message

GLM4_TOOL_PROMPT = (
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱 AI 公司训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{tool_text}"
)
QWEN_TOOL_PROMPT = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>{tool_text}"
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    """<tool_call></tool_call> XML tags:\n<tool_call>\n{{"name": <function-name>, """
    """"arguments": <args-json-object>}}\n</tool_call>"""
)
DEFAULT_TOOL_PROMPT = (
    "You have access to the following tools:\n{tool_text}"
    "Use the following format if using a tool:\n"
    "```\n"
    "Action: tool name (one of [{tool_names}])\n"
    "Action Input: the input to the tool, in a JSON format representing the kwargs "
    """(e.g. ```{{"input": "hello world", "num_beams": 5}}```)\n"""
    "```\n"
)
TOOL_FORMATS = {
    "chatglm3": "glm4",
    "glm4": "glm4",
    "chatml": "qwen",
    "qwen": "qwen",
    "default": "default",
    "llama2": "default",
}


def with_tools(conversation: Conversation, template: str) -> Conversation:
    """Return the conversation with its tools in the system message and its calls in `template`'s format."""
    if not conversation.tools and not conversation.calls:
        return conversation
    where = conversation.source or "a conversation"
    style = TOOL_FORMATS.get(template)
    if style is None:
        raise FinetuneError(
            f"{where} holds function calls; train it with --template {', '.join(TOOL_FORMATS)}, "
            f"whose models call tools, not {template}"
        )
    messages = list(conversation.messages)
    for index in conversation.calls:
        messages[index] = Message("assistant", _call(messages[index].content, style, where))
    if conversation.tools:
        text = _tool_text(json.loads(conversation.tools), style)
        if messages and messages[0].role == "system":
            messages[0] = Message("system", messages[0].content + text)
        else:
            messages.insert(0, Message("system", text.lstrip("\n")))
    return replace(conversation, messages=tuple(messages), tools="", calls=())


def _tool_text(tools: list[dict], style: str) -> str:
    """Return the system text describing the tools, as LLaMA-Factory's glm4 or qwen tool format has it."""
    if style == "glm4":
        text = ""
        for tool in tools:
            tool = tool.get("function", tool) if tool.get("type") == "function" else tool
            body = json.dumps(tool, indent=4, ensure_ascii=False)
            text += (
                f"\n\n## {tool.get('name', '')}\n\n{body}\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
            )
        return GLM4_TOOL_PROMPT.format(tool_text=text)
    if style == "default":
        return _default_tool_text(tools)
    wrapped = (
        tool if tool.get("type") == "function" else {"type": "function", "function": tool} for tool in tools
    )
    return QWEN_TOOL_PROMPT.format(
        tool_text="".join("\n" + json.dumps(t, ensure_ascii=False) for t in wrapped)
    )


def _default_tool_text(tools: list[dict]) -> str:
    """Return the system text describing the tools in LLaMA-Factory's default tool format (ReAct-style)."""
    text, names = "", []
    for tool in tools:
        tool = tool.get("function", tool) if tool.get("type") == "function" else tool
        parameters = tool.get("parameters") or {}
        lines = ""
        for name, param in (parameters.get("properties") or {}).items():
            required = ", required" if name in parameters.get("required", []) else ""
            enum = f", should be one of [{', '.join(param['enum'])}]" if param.get("enum") else ""
            items = (
                f", where each item should be {param['items'].get('type', '')}" if param.get("items") else ""
            )
            lines += f"  - {name} ({param.get('type', '')}{required}): {param.get('description', '')}{enum}{items}\n"
        text += f"> Tool Name: {tool.get('name', '')}\nTool Description: {tool.get('description', '')}\nTool Args:\n{lines}\n"
        names.append(tool.get("name", ""))
    return DEFAULT_TOOL_PROMPT.format(tool_text=text, tool_names=", ".join(names))


def _call(content: str, style: str, where: str) -> str:
    """Return a function call ({"name", "arguments"} JSON, or a list of them) as the model writes it."""
    try:
        calls = json.loads(content)
    except json.JSONDecodeError:
        raise FinetuneError(f'{where}: a function call is not JSON {{"name", "arguments"}}') from None
    calls = calls if isinstance(calls, list) else [calls]
    if not calls or not all(isinstance(call, dict) and "name" in call for call in calls):
        raise FinetuneError(f"{where}: a function call has no 'name'")
    arguments = [
        json.loads(call["arguments"]) if isinstance(call.get("arguments"), str) else call.get("arguments", {})
        for call in calls
    ]
    if style == "default":
        return "\n".join(
            f"Action: {call['name']}\nAction Input: {json.dumps(args, ensure_ascii=False)}"
            for call, args in zip(calls, arguments, strict=True)
        )
    if style == "glm4":
        if len(calls) > 1:
            raise FinetuneError(f"{where}: GLM models make one function call at a time")
        return f"{calls[0]['name']}\n{json.dumps(arguments[0], ensure_ascii=False)}"
    return "\n".join(
        "<tool_call>\n"
        + json.dumps({"name": call["name"], "arguments": args}, ensure_ascii=False)
        + "\n</tool_call>"
        for call, args in zip(calls, arguments, strict=True)
    )
