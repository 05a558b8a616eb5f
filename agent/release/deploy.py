"""Register model versions with Ollama: ``cc-claude-agent:vN`` and ``cc-claude-agent:latest``.

A deployment, through the ``ollama`` Python client (which reads ``OLLAMA_HOST``):

0. Refuse a name under which Ollama holds models ccrl did not create (``--force`` replaces them):
   ``cc-claude-agent:latest`` is overwritten on every deployment, and ``--name llama3.2`` must
   not replace the user's own ``llama3.2``.
1. ``HEAD /api/blobs/<digest>``: does Ollama already have the GGUF? (The client has no call for
   it; the request goes through httpx, which the client is built on, to the same host.)
2. Upload the GGUF only when it does not (``create_blob``; Ollama checks the digest).
3. ``create`` ``<name>:vN`` from that blob with the Go template that renders exactly the
   training conversation format (``ccrl.trainers.ollama_template``), the family's stop tokens,
   the context length and the system prompt the model was trained with.
4. ``show`` it back and check that the template, the system prompt and the parameters took.
5. Point ``<name>:latest`` at it (``copy``) and check ``latest`` the same way.
6. Record the version as deployed (the previous one is retired) and apply file retention.

Nothing is half-registered: ``latest`` is only moved after ``vN`` was verified, and a ``vN``
that fails its check is deleted again. When Ollama cannot be reached or answers with an error,
the message names ``OLLAMA_HOST``, the version stays what it was (a candidate), and the agent
retries on its next cycle.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import select

from ccrl.agent.core.config import Settings, get_settings
from ccrl.agent.store.db import session_scope
from ccrl.agent.store.models import DatasetVersion, ModelVersion
from ccrl.agent.release.versions import (
    CANDIDATE,
    DEPLOYED,
    MODEL_NAME,
    REJECTED,
    VersionError,
    add_history,
    apply_retention,
    deployed_version,
    get_version,
    list_versions,
    mark_deployed,
    mark_rolled_back,
    models_root,
    rollback_target,
)

DEFAULT_NUM_CTX = 8192
HEAD_TIMEOUT_S = 10.0
Progress = Callable[[str], None]


class DeployError(RuntimeError):
    """Ollama refused or failed a step; the message says what happened and what to do."""


class OllamaUnreachable(DeployError):
    """Ollama could not be reached at OLLAMA_HOST."""


@dataclass
class Registration:
    """What Ollama was given for one version."""

    tag: str
    digest: str
    uploaded: bool
    existed: bool
    """Whether ``tag`` was already in Ollama before (then it is never deleted on failure)."""
    template: str
    system: str
    parameters: dict[str, Any]


def ollama_host(host: str | None = None) -> str:
    """The URL the ``ollama`` client talks to: ``host``, else ``OLLAMA_HOST``, else the default.

    The client's own parser is used, so the blob check goes exactly where the client goes.
    """
    from ollama._client import _parse_host  # the client's host resolution, reused on purpose

    return _parse_host(host or os.environ.get("OLLAMA_HOST"))


def _where(host: str | None) -> str:
    env = os.environ.get("OLLAMA_HOST")
    source = f"OLLAMA_HOST={env}" if env and not host else ("--host" if host else "OLLAMA_HOST is not set: the default")
    return f"{ollama_host(host)} ({source})"


def _unreachable(host: str | None, exc: BaseException, number: int | None) -> OllamaUnreachable:
    stays = f" Model version {number} stays as it was (a candidate until deployed)." if number is not None else ""
    return OllamaUnreachable(
        f"cannot reach Ollama at {_where(host)}: {exc}. Start Ollama (`ollama serve`) or set OLLAMA_HOST to "
        f"where it runs, then deploy again; the agent retries on its next cycle.{stays}"
    )


def _ollama_failed(host: str | None, step: str, exc: Any, number: int | None) -> DeployError:
    code = getattr(exc, "status_code", None)
    text = getattr(exc, "error", None) or str(exc)
    stays = f" Model version {number} was not deployed." if number is not None else ""
    return DeployError(f"Ollama at {_where(host)} refused to {step}"
                       + (f" (HTTP {code})" if code and code > 0 else "") + f": {text}.{stays}")


def blob_exists(digest: str, *, host: str | None = None) -> bool:
    """``HEAD /api/blobs/<digest>`` on the Ollama the client uses: 200 yes, 404 no."""
    import httpx

    response = httpx.head(f"{ollama_host(host)}/api/blobs/{digest}", timeout=HEAD_TIMEOUT_S)
    if response.status_code == 200:
        return True
    if response.status_code == 404:
        return False
    raise DeployError(f"Ollama answered HTTP {response.status_code} to HEAD /api/blobs/{digest}: {response.text.strip()}")


def parse_show_parameters(text: str) -> dict[str, list[Any]]:
    """``show``'s ``parameters`` text (``name value`` lines, a name repeated per list item) as
    ``{name: [values]}``; quoted values are decoded, numbers parsed."""
    params: dict[str, list[Any]] = {}
    for line in (text or "").splitlines():
        if not line.strip():
            continue
        key, _, raw = line.strip().partition(" ")
        raw = raw.strip()
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        params.setdefault(key, []).append(value)
    return params


def modelfile_system(modelfile: str) -> str | None:
    """The ``SYSTEM`` of a Modelfile as ``show`` prints it (in triple quotes, in quotes, or bare),
    or None when it has none. The client's ``ShowResponse`` has no ``system`` field."""
    marker = "\nSYSTEM "
    text = "\n" + (modelfile or "")
    start = text.find(marker)
    if start < 0:
        return None
    rest = text[start + len(marker):]
    for quote in ('"""', '"'):
        if rest.startswith(quote):
            end = rest.find(quote, len(quote))
            return rest[len(quote):end] if end >= 0 else None
    return rest.split("\n", 1)[0]


def check_registered(show: Any, *, template: str, system: str, parameters: dict[str, Any]) -> list[str]:
    """What differs between what Ollama reports for a model and what was registered."""
    problems = []
    if (show.template or "") != template:
        problems.append("the template Ollama reports is not the one registered")
    if system and modelfile_system(show.modelfile or "") != system:
        problems.append("the system prompt in the Modelfile Ollama reports is not the one registered")
    reported = parse_show_parameters(show.parameters or "")
    for key, value in parameters.items():
        want = value if isinstance(value, list) else [value]
        got = reported.get(key, [])
        if sorted(map(str, got)) != sorted(map(str, want)):
            problems.append(f"parameter {key}: Ollama reports {got}, registered {want}")
    return problems


def system_prompt_for(settings: Settings, version: ModelVersion) -> str:
    """The system prompt the model was trained with: the agent's, naming the tools of the
    version's dataset (``tools.json``); without a dataset, the agent's with no tool list."""
    from ccrl.trainers.conversation import system_prompt

    tools: list[dict[str, Any]] = []
    if version.dataset_version_id is not None:
        with session_scope(settings) as session:
            dataset = session.get(DatasetVersion, version.dataset_version_id)
            path = Path(dataset.path) / "tools.json" if dataset and dataset.path else None
        if path is not None and path.is_file():
            tools = json.loads(path.read_text(encoding="utf-8"))
    return system_prompt(tools)


def registration_for(settings: Settings, version: ModelVersion) -> tuple[str, str, dict[str, Any]]:
    """(template, system prompt, parameters) to register a version with."""
    from ccrl.trainers.ollama_template import family, ollama_parameters

    export = (version.metrics or {}).get("export", {})
    family_name = export.get("family")
    if not family_name:
        raise VersionError(f"model version {version.number} does not record its chat format; export it again")
    context = export.get("context_length") or DEFAULT_NUM_CTX
    params = ollama_parameters(family_name, num_ctx=min(int(context), DEFAULT_NUM_CTX))
    return family(family_name).template, system_prompt_for(settings, version), params


def _client(host: str | None) -> Any:
    import ollama

    return ollama.Client(host=host)


def _transport_errors() -> tuple[type[BaseException], ...]:
    import httpx

    # The client turns connection failures into ConnectionError; other transport failures
    # (timeouts, a server that went away mid-request) surface as httpx errors.
    return (ConnectionError, httpx.TransportError)


def register(version: ModelVersion, *, template: str, system: str, parameters: dict[str, Any],
             name: str = MODEL_NAME, host: str | None = None, progress: Progress | None = None) -> Registration:
    """Steps 1-4 of a deployment for ``version`` (its file must exist): the blob (uploaded only
    when missing), ``<name>:vN``, and the check of what Ollama reports. A ``vN`` that fails the
    check is deleted again."""
    import ollama

    say = progress or (lambda _m: None)
    path = Path(version.gguf_path or "")
    if not path.is_file():
        raise VersionError(f"the GGUF of model version {version.number} is gone ({version.gguf_path or 'removed by retention'}); "
                           "export the run again to deploy it")
    digest = f"sha256:{version.gguf_sha256}"
    tag = f"{name}:v{version.number}"
    client = _client(host)
    created = False
    try:
        existed = _has_model(client, tag)
        if blob_exists(digest, host=host):
            uploaded = False
            say(f"Ollama already has {digest[:19]}…: upload skipped")
        else:
            say(f"uploading {path.name} ({path.stat().st_size / 1e6:.1f} MB) to Ollama")
            sent = client.create_blob(path)
            if sent != digest:
                raise DeployError(f"{path} changed since it was exported (sha256 {sent[7:19]}…, recorded "
                                  f"{digest[7:19]}…); export the run again")
            uploaded = True
        final_status = None
        for status in client.create(model=tag, files={path.name: digest}, template=template, system=system,
                                    parameters=parameters, stream=True):
            created = not existed
            final_status = status.status
            say(f"ollama: {status.status}")
        if final_status != "success":
            raise DeployError(f"Ollama did not finish creating {tag} (last status: {final_status!r})")
        problems = check_registered(client.show(tag), template=template, system=system, parameters=parameters)
        if problems:
            raise DeployError(f"Ollama did not keep what was registered for {tag}: " + "; ".join(problems))
        return Registration(tag=tag, digest=digest, uploaded=uploaded, existed=existed, template=template,
                            system=system, parameters=parameters)
    except _transport_errors() as exc:
        raise _unreachable(host, exc, version.number) from exc
    except ollama.ResponseError as exc:
        _cleanup(client, tag if created else None)
        raise _ollama_failed(host, f"register {tag}", exc, version.number) from exc
    except DeployError:
        _cleanup(client, tag if created else None)
        raise


def _has_model(client: Any, tag: str) -> bool:
    import ollama

    try:
        client.show(tag)
    except ollama.ResponseError as exc:
        if exc.status_code == 404:
            return False
        raise
    return True


def _cleanup(client: Any, tag: str | None) -> None:
    """Delete a half-registered tag (best effort: the error being reported matters more)."""
    if tag is None:
        return
    try:
        client.delete(tag)
    except Exception:  # noqa: BLE001 - cleanup must not mask the original error
        pass


def point_latest(tag: str, *, template: str, system: str, parameters: dict[str, Any], name: str = MODEL_NAME,
                 host: str | None = None, number: int | None = None) -> str:
    """Step 5: ``<name>:latest`` becomes a copy of ``tag``; checked like ``tag`` was."""
    import ollama

    latest = f"{name}:latest"
    client = _client(host)
    try:
        client.copy(tag, latest)
        problems = check_registered(client.show(latest), template=template, system=system, parameters=parameters)
        digests = {m.model: m.digest for m in client.list().models}
    except _transport_errors() as exc:
        raise _unreachable(host, exc, number) from exc
    except ollama.ResponseError as exc:
        raise _ollama_failed(host, f"point {latest} at {tag}", exc, number) from exc
    if digests.get(latest) != digests.get(tag):
        problems.append(f"{latest} and {tag} are different models in `ollama list`")
    if problems:
        raise DeployError(f"{latest} does not match {tag} after the copy: " + "; ".join(problems))
    return latest


_BLOB_DIGEST = re.compile(r"^FROM .*sha256[-:]([0-9a-f]{64})\s*$", re.MULTILINE)


def _base_name(model: str) -> str:
    """An Ollama model's name without its tag, as Ollama compares names: case-insensitively, the
    default registry's prefix dropped (``llama3.2:1b`` and ``registry.ollama.ai/library/llama3.2``
    are both ``llama3.2``)."""
    name = model.strip().lower().removeprefix("registry.ollama.ai/").removeprefix("library/")
    head, colon, tag = name.rpartition(":")
    return head if colon and "/" not in tag else name


def created_by_ccrl(show: Any, digests: set[str]) -> bool:
    """Whether ccrl made the model that ``show`` describes: its weights are a GGUF ccrl exported
    (the Modelfile's ``FROM`` names the blob by its sha256, which the store records for every
    version), or its system prompt is the one ccrl registers (for a store that was reset)."""
    from ccrl.trainers.conversation import system_prompt

    modelfile = getattr(show, "modelfile", None) or ""
    if any(digest in digests for digest in _BLOB_DIGEST.findall(modelfile)):
        return True
    intro = system_prompt([]).split("\n\n", 1)[0]
    return (modelfile_system(modelfile) or "").startswith(intro)


def foreign_models(settings: Settings, name: str, host: str | None = None, number: int | None = None) -> list[str]:
    """The models Ollama holds under ``name`` (any tag) that ccrl did not create (``number``: the
    version being deployed, for the error messages)."""
    import ollama

    with session_scope(settings) as session:
        digests = {d for d in session.exec(select(ModelVersion.gguf_sha256)) if d}
    client = _client(host)
    wanted = _base_name(name)
    try:
        tags = [m.model for m in client.list().models if m.model and _base_name(m.model) == wanted]
        return [tag for tag in tags if not created_by_ccrl(client.show(tag), digests)]
    except _transport_errors() as exc:
        raise _unreachable(host, exc, number) from exc
    except ollama.ResponseError as exc:
        raise _ollama_failed(host, f"list the models named {name}", exc, number) from exc


def _check_name_is_ccrls(settings: Settings, version: ModelVersion, name: str, host: str | None, *, action: str,
                         force: bool = False, force_flags: str | None = None) -> list[str]:
    """Refuse to register under a name whose models ccrl did not create (they would be
    overwritten, or mixed with ccrl's versions) unless ``force``; returns those models. When
    Ollama fails to answer, the failure is noted in the version's history."""
    try:
        foreign = foreign_models(settings, name, host, version.number)
    except DeployError as exc:
        record_failure(settings, version.id, str(exc))
        raise
    if foreign and not force:
        it = "it" if len(foreign) == 1 else "them"
        remedy = f"Pick another name with --name, or replace {it} with {force_flags}" if force_flags else \
            "Give the name ccrl deploys under with --name"
        raise VersionError(
            f"Ollama already has {', '.join(foreign)}, which ccrl did not create (not built from a GGUF it exported, "
            f"nor with its system prompt): {action} as {name} would overwrite or mix with {it}. Nothing was changed. "
            f"{remedy}.")
    return foreign


def _check_deployable(version: ModelVersion, force: bool, reason: str | None) -> None:
    if force and not (reason and reason.strip()):
        raise VersionError("--force needs --reason: say why this version is deployed anyway (it is recorded)")
    gate = version.gate or {}
    if version.status == REJECTED and not force:
        raise VersionError(f"model version {version.number} was rejected; deploy it anyway with --force --reason '...'")
    if "passed" not in gate and not force:
        raise VersionError(f"model version {version.number} has not been through the evaluation gate: run "
                           f"`ccrl eval --version {version.number}` (it records the gate's decision), or deploy it "
                           "anyway with --force --reason '...'")
    if gate.get("passed") is False and not force:
        raise VersionError(f"model version {version.number} did not pass the evaluation gate "
                           f"({gate.get('reason', 'see `ccrl models show`')}); deploy it anyway with --force --reason '...'")


def _pick(session: Any, model_version_id: int | None, number: int | None) -> ModelVersion:
    if model_version_id is not None:
        version = session.get(ModelVersion, model_version_id)
        if version is None:
            raise VersionError(f"there is no model version with id {model_version_id}")
        return version
    if number is not None:
        return get_version(session, number)
    candidates = [v for v in list_versions(session) if v.status == CANDIDATE]
    if not candidates:
        raise VersionError("there is no candidate to deploy: export one with `ccrl export`, or pick a version "
                           "with --version N (`ccrl models list`)")
    return candidates[-1]


def _register_and_point(settings: Settings, version: ModelVersion, template: str, system: str,
                        parameters: dict[str, Any], name: str, host: str | None,
                        progress: Progress | None) -> tuple[Registration, str]:
    """Register ``version`` and move ``latest`` to it; on failure remove a tag this attempt
    created (``latest`` is untouched) and note the failure in the version's history."""
    try:
        registration = register(version, template=template, system=system, parameters=parameters, name=name,
                                host=host, progress=progress)
        try:
            latest = point_latest(registration.tag, template=template, system=system, parameters=parameters,
                                  name=name, host=host, number=version.number)
        except DeployError:
            if not registration.existed:
                _cleanup(_client(host), registration.tag)
            raise
    except DeployError as exc:
        record_failure(settings, version.id, str(exc))
        raise
    return registration, latest


def deploy_version(model_version_id: int | None = None, *, number: int | None = None, settings: Settings | None = None,
                   force: bool = False, reason: str | None = None, name: str = MODEL_NAME, host: str | None = None,
                   progress: Progress | None = None) -> ModelVersion:
    """Deploy a version (by id, by number, or the newest candidate) to Ollama and record it.

    Raises ``VersionError`` (not deployable), ``OllamaUnreachable`` or ``DeployError``; the
    version's status is unchanged then.
    """
    settings = settings or get_settings()
    with session_scope(settings) as session:
        version = _pick(session, model_version_id, number)
        _check_deployable(version, force, reason)
        overrides_gate = force and (version.status == REJECTED or (version.gate or {}).get("passed") is not True)
        session.expunge(version)
    replaced = _check_name_is_ccrls(settings, version, name, host, action=f"deploying model version {version.number}",
                                    force=force, force_flags="--force --reason '...'")
    if not force:
        # The recorded decision holds only for the weights it judged: re-hashed here, and
        # evaluated again when they changed since (gate.require_pass).
        from ccrl.agent.evaluation.gate import GateError, require_pass

        try:
            gate = require_pass(version.id, settings=settings, progress=None if progress is None else (
                lambda event: progress("evaluating: " + ", ".join(f"{k}={v}" for k, v in event.items()))))
        except GateError as exc:
            raise VersionError(f"cannot check model version {version.number} against the evaluation gate: {exc}") from exc
        if not gate.get("passed"):
            raise VersionError(f"model version {version.number} did not pass the evaluation gate "
                               f"({gate.get('reason', 'see `ccrl models show`')}); deploy it anyway with --force --reason '...'")
    template, system, parameters = registration_for(settings, version)
    registration, latest = _register_and_point(settings, version, template, system, parameters, name, host, progress)
    if progress is not None:
        progress(f"{latest} → {registration.tag}")
    with session_scope(settings) as session:
        row = session.get(ModelVersion, version.id)
        mark_deployed(session, row, registration.tag, forced_reason=reason if force else None, latest=latest,
                      host=ollama_host(host), uploaded=registration.uploaded,
                      **({"replaced_models_ccrl_did_not_create": replaced} if replaced else {}))
        metrics = dict(row.metrics)
        metrics["ollama"] = {"tag": registration.tag, "latest": latest, "digest": registration.digest,
                             "system": system, "parameters": parameters}
        row.metrics = metrics
        session.add(row)
        session.flush()
        apply_retention(session, settings.agent.keep_model_versions, models_root(settings))
        session.flush()
        session.expunge(row)
    if overrides_gate:
        from ccrl.agent.evaluation.gate import record_override  # the gate's record of the override, logged as a warning

        record_override(row.id, reason or "", settings=settings)
    return row


def rollback(*, settings: Settings | None = None, reason: str | None = None, name: str = MODEL_NAME,
             host: str | None = None, progress: Progress | None = None) -> ModelVersion:
    """Point ``latest`` back at the version deployed before the current one (re-registering
    it if Ollama lost it). The current version becomes rejected. Returns the restored version."""
    settings = settings or get_settings()
    with session_scope(settings) as session:
        current = deployed_version(session)
        if current is None:
            raise VersionError("nothing is deployed, so there is nothing to roll back")
        target = rollback_target(session)
        if target is None:
            raise VersionError(f"model version {current.number} is the only version deployed so far (or the earlier "
                               "ones' files are gone): there is no version to roll back to")
        session.expunge(current)
        session.expunge(target)
    _check_name_is_ccrls(settings, target, name, host, action=f"rolling back to model version {target.number}")
    template, system, parameters = registration_for(settings, target)
    registration, latest = _register_and_point(settings, target, template, system, parameters, name, host, progress)
    if progress is not None:
        progress(f"{latest} → {registration.tag} (rolled back from v{current.number})")
    with session_scope(settings) as session:
        current_row = session.get(ModelVersion, current.id)
        target_row = session.get(ModelVersion, target.id)
        mark_rolled_back(session, current_row, target_row, registration.tag, reason)
        session.flush()
        session.expunge(target_row)
    return target_row


def record_failure(settings: Settings, version_id: int, error: str) -> None:
    """Note a failed deployment in the version's history (its status does not change)."""
    with session_scope(settings) as session:
        row = session.get(ModelVersion, version_id)
        if row is not None:
            add_history(row, "deploy failed", error=error)
            session.add(row)

