"""Reading ComfyUI workflow files the way ComfyUI's frontend and server do, for the workflow tests.

UI format (what users drag into ComfyUI): `nodes` with `inputs` (sockets, each with a `link` id or null),
`outputs` (with the ids of their `links`) and `widgets_values` (one value per widget, in input order, plus the
extra values the frontend stores: "control_after_generate" after a seed, the upload button after a file combo);
`links` as `[id, origin_id, origin_slot, target_id, target_slot, type]`.
API format (what /prompt executes): `{id: {"class_type", "inputs": {name: value or [origin_id, slot]}}}`.

Node definitions are in ComfyUI's /object_info layout: ours are read from the node classes, the others (core
nodes, ReActor) from tests/data/foreign_nodes.json, recorded from a real ComfyUI and ReActor's source.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FOREIGN_NODES = Path(__file__).parent / "data" / "foreign_nodes.json"
CONTROL_SUFFIX = ":control_after_generate"
UPLOAD_SLOT = "upload"


def node_definitions(node_classes: dict[str, type]) -> dict[str, dict]:
    """Definitions of our node classes and the foreign nodes the workflows use, in /object_info layout."""
    definitions = json.loads(FOREIGN_NODES.read_text())
    for node_type, cls in node_classes.items():
        inputs = cls.INPUT_TYPES()
        definitions[node_type] = {
            "input": inputs,
            "input_order": {section: list(specs) for section, specs in inputs.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(cls.RETURN_NAMES),
        }
    return definitions


def input_spec(definition: dict, name: str) -> tuple[object, dict] | None:
    for section in ("required", "optional"):
        spec = definition["input"].get(section, {}).get(name)
        if spec is not None:
            return spec[0], (spec[1] if len(spec) > 1 else {})
    return None


def is_widget(kind: object) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def combo_options(kind: object, options: dict) -> list | None:
    """The allowed values of a combo input; None when it is not a combo or its options are the user's files."""
    values = kind if isinstance(kind, list) else options.get("options") if kind == "COMBO" else None
    return values or None


def widget_slots(definition: dict) -> list[str]:
    """Names of the `widgets_values` entries the frontend stores for a node, in order."""
    slots: list[str] = []
    upload = False
    for section in ("required", "optional"):
        for name in definition["input_order"].get(section, []):
            kind, options = input_spec(definition, name)
            if not is_widget(kind):
                continue
            slots.append(name)
            if options.get("control_after_generate"):
                slots.append(name + CONTROL_SUFFIX)
            upload = upload or bool(options.get("image_upload") or options.get("video_upload"))
    # The frontend appends the upload button as the last required widget of file-loading nodes.
    return [*slots, UPLOAD_SLOT] if upload else slots


def validate_ui_workflow(workflow: dict, definitions: dict[str, dict], strict_types: set[str]) -> list[str]:
    """Problems in a UI-format workflow (empty when valid). Nodes in `strict_types` also get their widget values
    checked against their options (combo lists, ranges, value types)."""
    problems: list[str] = []
    nodes = {node["id"]: node for node in workflow["nodes"]}
    links = {link[0]: link for link in workflow["links"]}
    if max(nodes, default=0) > workflow["last_node_id"] or max(links, default=0) > workflow["last_link_id"]:
        problems.append("last_node_id/last_link_id are below the ids in use")
    for node in workflow["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        definition = definitions.get(node["type"])
        if definition is None:
            problems.append(f"{where}: unknown node type")
            continue
        problems += _check_node_inputs(node, definition, links, where)
        problems += _check_node_outputs(node, definition, links, where)
        slots = widget_slots(definition)
        values = node.get("widgets_values", [])
        if len(values) != len(slots):
            problems.append(f"{where}: {len(values)} widget values, expected {len(slots)} ({', '.join(slots)})")
        elif node["type"] in strict_types:
            for slot, value in zip(slots, values):
                problems += _check_widget_value(definition, slot, value, where)
    for link_id, origin, origin_slot, target, target_slot, link_type in links.values():
        source, sink = nodes.get(origin), nodes.get(target)
        if source is None or sink is None:
            problems.append(f"link {link_id}: joins missing nodes {origin} -> {target}")
            continue
        if origin_slot >= len(source["outputs"]) or target_slot >= len(sink["inputs"]):
            problems.append(f"link {link_id}: slot {origin_slot} -> {target_slot} does not exist on its nodes")
            continue
        if link_id not in (source["outputs"][origin_slot].get("links") or []):
            problems.append(f"link {link_id}: not listed on output {origin_slot} of node {origin}")
        if sink["inputs"][target_slot].get("link") != link_id:
            problems.append(f"link {link_id}: not the link of input {target_slot} of node {target}")
        if source["outputs"][origin_slot]["type"] != link_type:
            problems.append(f"link {link_id}: type {link_type} but node {origin} output is "
                            f"{source['outputs'][origin_slot]['type']}")
    return problems


def ui_to_api(workflow: dict, definitions: dict[str, dict]) -> dict[str, dict]:
    """The API-format prompt the frontend sends for a UI-format workflow (ComfyUI's "Export (API)")."""
    links = {link[0]: link for link in workflow["links"]}
    api: dict[str, dict] = {}
    for node in sorted(workflow["nodes"], key=lambda n: n["id"]):
        definition = definitions[node["type"]]
        inputs: dict[str, object] = {}
        for slot, value in zip(widget_slots(definition), node.get("widgets_values", [])):
            if input_spec(definition, slot) is not None:
                inputs[slot] = value
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, origin, origin_slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(origin), origin_slot]
        api[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                "_meta": {"title": node.get("title", node["type"])}}
    return api


def execution_order(api: dict[str, dict]) -> list[str]:
    """Node ids so that every node comes after the nodes it takes inputs from."""
    order: list[str] = []
    visiting: set[str] = set()

    def visit(node_id: str) -> None:
        if node_id in order:
            return
        if node_id in visiting:
            raise ValueError(f"cycle through node {node_id}")
        visiting.add(node_id)
        for value in api[node_id]["inputs"].values():
            if _is_link(value):
                visit(value[0])
        order.append(node_id)

    for node_id in api:
        visit(node_id)
    return order


def run_api_workflow(
    api: dict[str, dict],
    definitions: dict[str, dict],
    node_classes: dict[str, type],
    stand_ins: dict[str, Callable[..., tuple]],
) -> dict[str, tuple]:
    """Execute an API-format workflow: our nodes through their classes (inputs checked as ComfyUI's /prompt
    validation does), others through `stand_ins`. Returns every node's outputs by id."""
    results: dict[str, tuple] = {}
    for node_id in execution_order(api):
        node = api[node_id]
        node_type, definition = node["class_type"], definitions[node["class_type"]]
        kwargs = {}
        for name, value in node["inputs"].items():
            spec = input_spec(definition, name)
            if spec is None:
                raise ValueError(f"node {node_id} ({node_type}): unknown input {name!r}")
            if _is_link(value):
                origin, slot = value
                origin_type = definitions[api[origin]["class_type"]]["output"][slot]
                if spec[0] != origin_type:
                    raise ValueError(f"node {node_id} ({node_type}): input {name} is {spec[0]} but is fed {origin_type}")
                value = results[origin][slot]
            kwargs[name] = value
        missing = [n for n in definition["input"].get("required", {}) if n not in kwargs]
        if missing:
            raise ValueError(f"node {node_id} ({node_type}): required inputs {missing} missing")
        if node_type in node_classes:
            for name, value in node["inputs"].items():
                if not _is_link(value):
                    problems = _check_widget_value(definition, name, value, f"node {node_id} ({node_type})")
                    if problems:
                        raise ValueError("; ".join(problems))
            cls = node_classes[node_type]
            results[node_id] = getattr(cls(), cls.FUNCTION)(**kwargs)
        else:
            results[node_id] = stand_ins[node_type](**kwargs)
        expected = len(definition["output"])
        if len(results[node_id]) != expected:
            raise ValueError(f"node {node_id} ({node_type}) returned {len(results[node_id])} values, not {expected}")
    return results


def _is_link(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _check_node_inputs(node: dict, definition: dict, links: dict, where: str) -> list[str]:
    problems = []
    names = [socket["name"] for socket in node.get("inputs", [])]
    for index, socket in enumerate(node.get("inputs", [])):
        spec = input_spec(definition, socket["name"])
        if spec is None:
            problems.append(f"{where}: input {socket['name']!r} is not an input of this node type")
            continue
        kind = spec[0]
        if is_widget(kind) and "widget" not in socket:
            problems.append(f"{where}: widget {socket['name']!r} listed as a socket without 'widget'")
        expected_type = "COMBO" if isinstance(kind, list) else kind
        if socket["type"] != expected_type:
            problems.append(f"{where}: input {socket['name']} has type {socket['type']}, expected {expected_type}")
        link = socket.get("link")
        if link is not None and (link not in links or links[link][3:5] != [node["id"], index]):
            problems.append(f"{where}: input {socket['name']} refers to link {link}, which does not end here")
    for name, spec in definition["input"].get("required", {}).items():
        if not is_widget(spec[0]):
            socket = next((s for s in node.get("inputs", []) if s["name"] == name), None)
            if socket is None or socket.get("link") is None:
                problems.append(f"{where}: required input {name!r} is not connected")
    if len(set(names)) != len(names):
        problems.append(f"{where}: an input is listed twice")
    return problems


def _check_node_outputs(node: dict, definition: dict, links: dict, where: str) -> list[str]:
    problems = []
    outputs = node.get("outputs", [])
    if [o["type"] for o in outputs] != definition["output"]:
        problems.append(f"{where}: outputs {[o['type'] for o in outputs]}, expected {definition['output']}")
    for slot, output in enumerate(outputs):
        for link in output.get("links") or []:
            if link not in links or links[link][1:3] != [node["id"], slot]:
                problems.append(f"{where}: output {slot} lists link {link}, which does not start here")
    return problems


def _check_widget_value(definition: dict, slot: str, value: object, where: str) -> list[str]:
    if slot.endswith(CONTROL_SUFFIX):
        ok = value in ("fixed", "increment", "decrement", "randomize")
        return [] if ok else [f"{where}: {slot} = {value!r} is not a control mode"]
    if slot == UPLOAD_SLOT:
        return []
    kind, options = input_spec(definition, slot)
    allowed = combo_options(kind, options)
    if allowed is not None:
        return [] if value in allowed else [f"{where}: {slot} = {value!r} not in {allowed}"]
    checks = {"INT": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "FLOAT": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
              "STRING": lambda v: isinstance(v, str), "BOOLEAN": lambda v: isinstance(v, bool)}
    if kind in checks and not checks[kind](value):
        return [f"{where}: {slot} = {value!r} is not a {kind}"]
    if kind in ("INT", "FLOAT") and not options.get("min", value) <= value <= options.get("max", value):
        return [f"{where}: {slot} = {value!r} outside {options.get('min')}..{options.get('max')}"]
    return []
