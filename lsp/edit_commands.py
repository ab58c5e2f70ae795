"""Multi-line edits over LSP: workspace/executeCommand, textDocument/codeAction and `diffill/inlineEdit`.

Commands (one argument object each; positions in the negotiated encoding):
- `diffill.lsp.fillHoles` `{uri, ranges?}`: every `<FILL_ME>` plus each range, filled jointly;
- `diffill.lsp.rewrite` `{uri, range, all?}`: the lines the range touches; `all` regenerates everything,
  else only the tokens the model finds unlikely are re-masked;
- `diffill.lsp.completeBlock` `{uri, position}`: the body of the innermost block around the position.
A command computes the edit, then sends ONE `workspace/applyEdit` (a versioned TextDocumentEdit holding every
TextEdit: one undo step) and answers `{applied, edits, message}`. Nothing is applied when there is nothing
to do, no valid edit came, or the document changed meanwhile; the message says which. When the engine fails
the answer is a JSON-RPC error (lsp/errors.py: InvalidParams for a request it cannot serve as asked, e.g. a
range too long to rewrite; InternalError otherwise), so the editor shows why.
`diffill/inlineEdit` `{textDocument, position, range?, kind?, all?}` answers the same edits without applying
them (`{edits: [{range, text, textDocument: {uri, version}}]}`), for clients that preview them; it fails
the same way.
Every edit leaves the file with no more tree-sitter syntax errors than it had, and text outside the edited
spans is untouched (lsp/edits.py plans the spans; fim_server's edit request does the joint denoising).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import count
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams

from fim_server.shared.errors import DiffillError
from fim_server.shared.protocol import EditRequest
from lsp.documents import LspTextDocument, get_document, language_of, offset_of
from lsp.edits import (
    HOLE_MARKER,
    EditPlanError,
    Plan,
    enclosing_block,
    no_worse,
    plan_complete_block,
    plan_fill_holes,
    plan_rewrite,
    text_edits,
)
from lsp.errors import to_jsonrpc

log = logging.getLogger("diffill.lsp")

FILL_HOLES, REWRITE, COMPLETE_BLOCK = "diffill.lsp.fillHoles", "diffill.lsp.rewrite", "diffill.lsp.completeBlock"
INLINE_EDIT = "diffill/inlineEdit"
_KINDS = {"fillHoles": FILL_HOLES, "rewrite": REWRITE, "completeBlock": COMPLETE_BLOCK}
_ids = count()


def _get(obj: Any, name: str) -> Any:
    """A field of a JSON object as pygls hands it over (a dict, or an object with attributes)."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _position(obj: Any, what: str) -> types.Position:
    line, character = _get(obj, "line"), _get(obj, "character")
    if not (isinstance(line, int) and isinstance(character, int)) or isinstance(line, bool) or \
            isinstance(character, bool):
        raise JsonRpcInvalidParams(f"{what} must be a Position {{line, character}}")
    try:
        return types.Position(line=line, character=character)
    except ValueError as e:  # negative, or past 2**31 - 1
        raise JsonRpcInvalidParams(f"{what}: {e}") from e


def _range(obj: Any, what: str) -> types.Range:
    if obj is None:
        raise JsonRpcInvalidParams(f"{what} is required")
    return types.Range(start=_position(_get(obj, "start"), f"{what}.start"),
                       end=_position(_get(obj, "end"), f"{what}.end"))


def _offsets(doc, uri: str, rng: types.Range) -> tuple[int, int]:
    a, b = offset_of(doc, uri, rng.start), offset_of(doc, uri, rng.end)
    return (a, b) if a <= b else (b, a)


def make_plan(ls, command: str, args: Any) -> tuple[Any, str, str | None, Plan]:
    """-> (document, uri, language, plan). Bad arguments raise InvalidParams; nothing to do, EditPlanError."""
    uri = _get(args, "uri")
    if not isinstance(uri, str):
        raise JsonRpcInvalidParams(f"{command} takes one argument {{uri, ...}}")
    doc = get_document(ls.workspace, uri)
    language, s, source = language_of(doc, uri), ls.settings, doc.source
    if command == FILL_HOLES:
        ranges = _get(args, "ranges") or []
        if not isinstance(ranges, list):
            raise JsonRpcInvalidParams("ranges must be a list of Range")
        spans = [_offsets(doc, uri, _range(r, f"ranges[{i}]")) for i, r in enumerate(ranges)]
        plan = plan_fill_holes(source, spans, s.max_tokens)
    elif command == REWRITE:
        a, b = _offsets(doc, uri, _range(_get(args, "range"), "range"))
        plan = plan_rewrite(source, a, b, bool(_get(args, "all")), s.max_tokens)
    elif command == COMPLETE_BLOCK:
        offset = offset_of(doc, uri, _position(_get(args, "position"), "position"))
        plan = plan_complete_block(language, source, offset, min(512, 2 * s.max_tokens))
    else:  # pragma: no cover - only registered commands arrive here
        raise JsonRpcInvalidParams(f"unknown command {command}")
    return doc, uri, language, plan


@dataclass(frozen=True)
class Computed:
    doc: Any
    uri: str
    version: int  # of the document the edits were computed for
    edits: list[types.TextEdit]
    label: str
    message: str


async def compute(ls, command: str, args: Any) -> Computed:
    """The command's edits, not applied. Raises EditPlanError (nothing to do) or a DiffillError (the backend's)."""
    doc, uri, language, plan = make_plan(ls, command, args)
    version, source, s = doc.version, doc.source, ls.settings
    # positions are computed on the text the edit was planned on: the user may type while the engine works
    snapshot = LspTextDocument(uri, source, version=version, position_codec=doc.position_codec)
    req = EditRequest(id=f"edit{next(_ids)}", text=plan.text, regions=plan.regions, language=language,
                      steps=s.steps, threshold=s.threshold, revise_threshold=s.revise_threshold)
    res = await ls.backend.edit(req)
    spans = text_edits(plan, [r.text for r in res.regions], [r.changed for r in res.regions])
    spans = no_worse(language, source, spans)
    edits = [types.TextEdit(range=types.Range(start=snapshot.client_position_at_offset(a),
                                              end=snapshot.client_position_at_offset(b)), new_text=t)
             for a, b, t in spans]
    n = len(plan.targets)
    what = f"{len(edits)} of {n} regions changed" if n > 1 else ("changed" if edits else "unchanged")
    log.info("%s: %s in %.0f ms, %d passes", plan.label, what, res.ms, res.forward_passes)
    return Computed(doc, uri, version, edits, plan.label,
                    f"{plan.label}: {what} ({res.forward_passes} passes, {res.ms:.0f} ms)")


async def execute(ls, command: str, args: tuple) -> dict:
    """workspace/executeCommand for an edit command: compute, apply with one workspace/applyEdit, answer."""
    if len(args) != 1:
        raise JsonRpcInvalidParams(f"{command} takes one argument object, got {len(args)}")
    try:
        c = await compute(ls, command, args[0])
    except EditPlanError as e:
        return {"applied": False, "edits": 0, "message": f"Diffill: {e}"}
    except DiffillError as e:
        log.error("%s failed: %s: %s", command, e.code, e)
        raise to_jsonrpc(e) from e
    doc, uri, version, edits = c.doc, c.uri, c.version, c.edits
    if not edits:
        return {"applied": False, "edits": 0, "message": f"{c.label}: no valid edit, the file is unchanged"}
    if doc.version != version:
        return {"applied": False, "edits": 0,
                "message": "Diffill: the document changed while the edit was computed; nothing applied"}
    caps = ls.client_capabilities.workspace
    versioned = bool(caps and caps.workspace_edit and caps.workspace_edit.document_changes)
    if versioned:
        edit = types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version),
            edits=edits)])
    else:
        edit = types.WorkspaceEdit(changes={uri: edits})
    resp = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=c.label))
    if not resp.applied:
        return {"applied": False, "edits": 0,
                "message": f"Diffill: the editor did not apply the edit ({resp.failure_reason or 'no reason'})"}
    return {"applied": True, "edits": len(edits), "message": c.message}


def register_edit_features(server) -> None:
    @server.command(FILL_HOLES)
    async def fill_holes(ls, *args):
        return await execute(ls, FILL_HOLES, args)

    @server.command(REWRITE)
    async def rewrite(ls, *args):
        return await execute(ls, REWRITE, args)

    @server.command(COMPLETE_BLOCK)
    async def complete_block(ls, *args):
        return await execute(ls, COMPLETE_BLOCK, args)

    @server.feature(INLINE_EDIT)
    async def inline_edit(ls, params):
        """Preview: the edits a command would make, not applied. `kind` defaults to rewrite for a non-empty
        range, fill holes when the file has a hole marker, else complete block."""
        uri = _get(_get(params, "textDocument"), "uri")
        if not isinstance(uri, str):
            raise JsonRpcInvalidParams("textDocument.uri is required")
        doc = get_document(ls.workspace, uri)
        position = _position(_get(params, "position"), "position")
        rng = _get(params, "range")
        kind = _get(params, "kind")
        if kind is None:
            r = _range(rng, "range") if rng is not None else None
            kind = "rewrite" if r is not None and r.start != r.end else \
                "fillHoles" if HOLE_MARKER in doc.source else "completeBlock"
        if kind not in _KINDS:
            raise JsonRpcInvalidParams(f"kind must be one of {sorted(_KINDS)}, got {kind!r}")
        args = {"uri": uri, "position": position_dict(position), "all": bool(_get(params, "all"))}
        if rng is not None:
            args["range"] = rng
            r = _range(rng, "range")
            if kind == "fillHoles" and r.start != r.end:
                args["ranges"] = [rng]
        try:
            c = await compute(ls, _KINDS[kind], args)
        except EditPlanError as e:
            log.info("inline edit: %s", e)
            return {"edits": []}
        except DiffillError as e:
            log.error("inline edit failed: %s: %s", e.code, e)
            raise to_jsonrpc(e) from e
        return {"edits": [{"range": _range_dict(e.range), "text": e.new_text,
                           "textDocument": {"uri": uri, "version": c.version}} for e in c.edits]}

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.RefactorRewrite]))
    def code_actions(ls, params: types.CodeActionParams):
        uri = params.text_document.uri
        doc = get_document(ls.workspace, uri)
        rng = params.range
        actions = []

        def action(title: str, command: str, args: dict) -> None:
            actions.append(types.CodeAction(title=title, kind=types.CodeActionKind.RefactorRewrite,
                                            command=types.Command(title=title, command=command, arguments=[args])))

        holes = doc.source.count(HOLE_MARKER)
        if holes:
            action(f"Diffill: fill {holes} hole{'s' if holes != 1 else ''}", FILL_HOLES, {"uri": uri})
        if rng.start != rng.end:
            r = _range_dict(rng)
            action("Diffill: rewrite selected lines", REWRITE, {"uri": uri, "range": r, "all": False})
            action("Diffill: regenerate selected lines", REWRITE, {"uri": uri, "range": r, "all": True})
        try:
            enclosing_block(language_of(doc, uri), doc.source, offset_of(doc, uri, rng.start))
            action("Diffill: complete block", COMPLETE_BLOCK, {"uri": uri, "position": position_dict(rng.start)})
        except EditPlanError:
            pass
        return actions


def position_dict(p: types.Position) -> dict:
    return {"line": p.line, "character": p.character}


def _range_dict(r: types.Range) -> dict:
    return {"start": position_dict(r.start), "end": position_dict(r.end)}
