"""The training console: a full-screen live view of one run (:class:`LiveConsole`, in a terminal),
or plain log lines (:class:`PlainConsole`).

Both are ``TrainingHooks``: the engine (``Trainer.fit``) calls ``on_step`` / ``on_validation`` /
``on_checkpoint``; the console never trains and never changes the trainer: its keys post
requests that ``fit`` takes at the next step boundary.

* ``state``: what is shown (:class:`ConsoleState`) and the recording both consoles share
* ``render``: drawing a state (``render``, ``render_text``, ``format_plain_line``)
* ``terminal``: reading keys (``KeyReader``, ``decode_keys``)
* ``menu``: the setup menu's line editing, requests and config saving
* ``live`` / ``plain``: the two consoles
"""
from vsr_core.engine.console.live import LiveConsole
from vsr_core.engine.console.plain import PlainConsole
from vsr_core.engine.console.render import format_plain_line, render, render_text
from vsr_core.engine.console.state import ConsoleState, MenuState
from vsr_core.engine.console.terminal import BACKSPACE, ENTER, ESC, KeyReader, decode_keys

__all__ = [
    "BACKSPACE",
    "ENTER",
    "ESC",
    "ConsoleState",
    "KeyReader",
    "LiveConsole",
    "MenuState",
    "PlainConsole",
    "decode_keys",
    "format_plain_line",
    "render",
    "render_text",
]
