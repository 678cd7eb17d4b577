"""What the API's objects are made of: constants, times, errors (Status), label and field
selectors, quantities, $(VAR) expansion and patches (merge and JSON)."""

from __future__ import annotations

import logging
import re
from datetime import datetime, timezone

log = logging.getLogger("k8s_apiserver")

NODE_NAME = "pydist-test-node"
NODE_LABELS = {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux",
               "kubernetes.io/arch": "amd64"}
LABEL_SERVER = "pydist.k8s-apiserver"          # on containers and the network: which server owns them
LABEL_POD_UID = "pydist.k8s-apiserver.pod-uid"
HISTORY_LIMIT = 10_000     # watch events kept for replay; older resourceVersions get 410 Expired
RESYNC_INTERVAL = 1.0      # the kubelet re-reads every pod this often, in case a Docker event was missed
QUICK_RUN = 10.0           # a container that ran less than this before exiting counts as a quick failure
WAKE_INTERVAL = 1.0        # a watch with no events checks its deadline and client this often
KINDS = {"pods": "Pod", "secrets": "Secret", "namespaces": "Namespace"}


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def epoch(text: str) -> float:
    """A UTC RFC 3339 time (Docker's, with nanoseconds, or Kubernetes') as seconds since the epoch."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp() + float("0." + (fraction or "0")[:6])


def docker_time(text: str) -> str | None:
    """Docker's nanosecond timestamps cut to the RFC 3339 seconds Kubernetes writes; None for 'never'."""
    return None if not text or text.startswith("0001-") else text[:19] + "Z"


class ApiError(Exception):
    """An error answered as a Kubernetes ``Status`` object (what the client turns into ApiException)."""

    def __init__(self, code: int, reason: str, message: str, **details):
        super().__init__(message)
        self.code, self.reason, self.details = code, reason, details

    def status(self) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": str(self), "reason": self.reason, "details": self.details, "code": self.code}


def not_found(kind: str, name: str) -> ApiError:
    plural = kind.lower() + "s"
    return ApiError(404, "NotFound", f'{plural} "{name}" not found', name=name, kind=plural)




_REQUIREMENT = re.compile(
    r"""^\s*(?:!\s*(?P<notkey>[\w./-]+)
        |(?P<key>[\w./-]+)(?:\s*(?P<op>==|=|!=)\s*(?P<value>[\w.-]*)
                             |\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?)\s*$""", re.X)


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses: 'a in (x,y),b' -> ['a in (x,y)', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]


def _requirement(key: str, op: str, values: set[str]):
    """One selector requirement as a predicate on a dict of labels (or of an object's fields)."""
    return {"=": lambda d: d.get(key) in values, "!=": lambda d: d.get(key) not in values,
            "in": lambda d: d.get(key) in values, "notin": lambda d: d.get(key) not in values,
            "exists": lambda d: key in d, "!": lambda d: key not in d}[op]


def parse_label_selector(text: str | None):
    """Compile a labelSelector into a predicate on a labels dict; ApiError 400 when it does not parse.

    As on a real server, `k!=v` and `k notin (...)` also match objects without the label."""
    preds = []
    for part in _split_top_level(text or ""):
        m = _REQUIREMENT.match(part)
        if not m:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {part.strip()!r}")
        if m["notkey"]:
            preds.append(_requirement(m["notkey"], "!", set()))
        elif m["op"]:
            preds.append(_requirement(m["key"], "!=" if m["op"] == "!=" else "=", {m["value"]}))
        elif m["setop"]:
            preds.append(_requirement(m["key"], m["setop"], {v.strip() for v in m["values"].split(",") if v.strip()}))
        else:
            preds.append(_requirement(m["key"], "exists", set()))
    return lambda labels: all(p(labels or {}) for p in preds)


FIELDS = {"Pod": {"metadata.name", "metadata.namespace", "status.phase", "spec.nodeName",
                  "spec.restartPolicy", "status.podIP"},
          "Secret": {"metadata.name", "metadata.namespace", "type"},
          "Namespace": {"metadata.name", "status.phase"}}


def _field(obj: dict, path: str) -> str:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else None
    return "" if obj is None else str(obj)


def parse_field_selector(text: str | None, kind: str):
    """Compile a fieldSelector (=, ==, != on the fields a real server indexes) into a predicate on an object."""
    reqs = []
    for part in _split_top_level(text or ""):
        m = re.match(r"^\s*([\w.]+)\s*(==|=|!=)\s*(.*?)\s*$", part)
        if not m:
            raise ApiError(400, "BadRequest", f"invalid field selector: {part.strip()!r}")
        if m[1] not in FIELDS[kind]:
            raise ApiError(400, "BadRequest", f"field label not supported: {m[1]}")
        reqs.append((m[1], _requirement(m[1], "!=" if m[2] == "!=" else "=", {m[3]})))
    return lambda obj: all(pred({field: _field(obj, field)}) for field, pred in reqs)



# ---------------------------------------------------------------------------------------------
# Patches and values


def parse_quantity(text) -> float:
    """A Kubernetes quantity ('512Mi', '1G', '500m', '2', '1e3') as a number of base units."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m|)\s*", str(text))
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    factor = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
              "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}[m[2]]
    return float(m[1]) * factor


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values: $$ escapes, unknown names stay as written."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][\w.-]*)\)",
                  lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (also used for strategic merge patches: no list merging here)."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = merge_patch(merged.get(key), value)
    return merged


def json_patch(doc: dict, ops: list) -> dict:
    """RFC 6902 JSON patch (add, replace, remove, test); ApiError 422 when a path does not apply."""
    for op in ops:
        path = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        try:
            node = doc
            for part in path[:-1]:
                node = node[int(part)] if isinstance(node, list) else node[part]
            last = path[-1]
            if isinstance(node, list):
                last = len(node) if last == "-" else int(last)
            exists = (0 <= last < len(node)) if isinstance(node, list) else last in node
            if op["op"] == "test":
                if not exists or node[last] != op["value"]:
                    raise ApiError(422, "Invalid", f"the test operation failed at {op['path']}")
            elif op["op"] == "remove" and exists:
                del node[last]
            elif op["op"] == "replace" and exists:
                node[last] = op["value"]
            elif op["op"] == "add" and isinstance(node, list):
                node.insert(last, op["value"])
            elif op["op"] == "add":
                node[last] = op["value"]
            else:
                raise KeyError(last)
        except (KeyError, IndexError, ValueError, TypeError):
            raise ApiError(422, "Invalid", f"the {op['op']} operation does not apply to {op['path']}") from None
    return doc
