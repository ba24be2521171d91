"""The IPython face of mprofile-ipy: ``%mprofile`` and ``%%mprofile``.

A thin front end over reusable parts: :mod:`.options` (every option declared once: parser,
help and defaults), :mod:`.runner` (run code under the sampler), :mod:`.session` (a session
across cells), :mod:`.display` (show, store, export; degrade to text without an optional
library) and :mod:`.magic` (the magic itself). ``load_ipython_extension`` and
``unload_ipython_extension`` register and remove it; nothing else in the package imports
this layer (``%load_ext mprofile_ipy`` goes through ``mprofile_ipy.load_ipython_extension``).
"""

from __future__ import annotations

from typing import Any

from .magic import MProfileMagics

__all__ = ["MProfileMagics", "load_ipython_extension", "unload_ipython_extension"]

_loaded: dict[int, MProfileMagics] = {}


def load_ipython_extension(ip: Any) -> None:
    """Register ``%mprofile``/``%%mprofile`` and the session's cell events, and turn on the
    safety net (a cell is stopped with ``MemoryBudgetExceeded`` before the machine, the
    container or ``ulimit -v`` runs out of memory; ``%mprofile budget off`` opts out) and
    the flight recorder (what ``%mprofile postmortem`` reads after a kernel died)."""
    if id(ip) in _loaded:
        return
    magics = MProfileMagics(ip)
    ip.register_magics(magics)
    _register_figure_png(ip)
    ip.events.register("pre_run_cell", magics.pre_run_cell)
    ip.events.register("post_run_cell", magics.post_run_cell)
    _loaded[id(ip)] = magics
    try:
        from ..budget import enable_for_ipython

        enable_for_ipython(ip)
    except Exception as exc:  # noqa: BLE001 - the magics work without the safety net
        import sys

        print(f"mprofile: the safety net and flight recorder could not start "
              f"({type(exc).__name__}: {exc}); the magics work without them.", file=sys.stderr)


def _register_figure_png(ip: Any) -> None:
    """Let a returned matplotlib Figure (``result.plot()``) show as an image even when no
    matplotlib backend was set up (``%matplotlib inline`` would); never override one."""
    formatter = getattr(getattr(ip, "display_formatter", None), "formatters", {}).get(
        "image/png")
    if formatter is None:
        return
    try:
        formatter.lookup_by_type("matplotlib.figure.Figure")
        return  # someone (the inline backend) handles figures already
    except KeyError:
        pass

    def to_png(figure: Any) -> bytes | None:
        from ..renderers.chart import to_png as png

        return png(figure)

    formatter.for_type_by_name("matplotlib.figure", "Figure", to_png)


def unload_ipython_extension(ip: Any) -> None:
    """Remove the magics and events, and stop a session they started."""
    magics = _loaded.pop(id(ip), None)
    if magics is None:
        return
    magics.stop_session()
    try:
        from ..budget import disable_for_ipython

        disable_for_ipython(ip)
    except Exception:  # noqa: BLE001 - unloading goes on
        pass
    for event, callback in (("pre_run_cell", magics.pre_run_cell),
                            ("post_run_cell", magics.post_run_cell)):
        try:
            ip.events.unregister(event, callback)
        except ValueError:
            pass
    manager = ip.magics_manager
    for kind in ("line", "cell"):
        table = manager.magics.get(kind, {})
        if getattr(table.get("mprofile"), "__self__", None) is magics:
            del table["mprofile"]
    manager.registry.pop(type(magics).__name__, None)
