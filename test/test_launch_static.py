"""Static cross-check of launch files, parameter files and RViz configs (launch_ros is not installable
here, so nothing is launched): every executable a launch file starts exists, every parameters file exists,
every parameter in config/*.yaml is one the node declares, and every topic an RViz config shows is one the
node publishes or subscribes after the launch file's remappings.

Launch files are read with ast, so only literal values and LaunchConfiguration(...) with a literal default
(DeclareLaunchArgument) are resolved; anything else is reported as unresolvable rather than guessed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from catkin_pkg.package import parse_package

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cleanpose_ros"
LAUNCH_FILES = sorted((REPO_ROOT / "launch").glob("*.py"))
CONFIG_FILES = sorted((REPO_ROOT / "config").glob("*.yaml"))
RVIZ_FILES = sorted((REPO_ROOT / "rviz").glob("*.rviz"))
# Modules holding the node's parameter declarations and its publishers / subscriptions.
NODE_MODULES = sorted((REPO_ROOT / PACKAGE).glob("*.py"))
# Parameters every rclpy node has without declaring them.
IMPLICIT_PARAMETERS = {"use_sim_time", "start_type_description_service"}
NODE_CLASSES = {"Node", "LifecycleNode", "ComposableNode"}


# --------------------------------------------------------------------------------------------------- helpers
def _call_name(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def console_scripts() -> dict[str, str]:
    """setup.py's console_scripts, read with ast (setup.py is not executed)."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in value.elts]
                    return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}
    raise AssertionError("setup.py has no console_scripts entry points")


def package_dirs() -> dict[str, str]:
    """setup.py's package_dir mapping (import name -> folder), read with ast."""
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "package_dir":
            return ast.literal_eval(node.value)
    return {}


def design_executables() -> dict[str, str]:
    """The `name` -> `module:function` pairs of docs/DESIGN.md's "Executables" section."""
    text = (REPO_ROOT / "docs" / "DESIGN.md").read_text()
    section = text.split("## Executables", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"`([\w-]+)` -> `([\w.]+:\w+)`", section))


@dataclass
class LaunchNode:
    file: str
    package: str | None
    executable: str | None
    name: str | None
    namespace: str
    remappings: dict[str, str] = field(default_factory=dict)
    unresolved: list[str] = field(default_factory=list)


class LaunchFile:
    """What a launch file's ast says: declared arguments with literal defaults, nodes, referenced files."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.defaults: dict[str, str] = {}
        self.declared_arguments: list[str] = []
        # Names bound once by a plain assignment anywhere in the file (helpers' locals included).
        targets: dict[str, list[ast.expr]] = {}
        for n in ast.walk(self.tree):
            if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
                targets.setdefault(n.targets[0].id, []).append(n.value)
        self.assignments = {name: values[0] for name, values in targets.items() if len(values) == 1}
        # One-parameter functions that return LaunchConfiguration(...) of their argument, evaluated or not.
        self.config_wrappers = {
            f.name
            for f in ast.walk(self.tree)
            if isinstance(f, ast.FunctionDef)
            and len(f.args.args) == 1
            and any(isinstance(c, ast.Call) and _call_name(c) == "LaunchConfiguration" for c in ast.walk(f))
        }
        for call in self._calls("DeclareLaunchArgument"):
            name = self._literal(call.args[0]) if call.args else self._literal(_kw(call, "name"))
            default = _kw(call, "default_value")
            if default is None and len(call.args) > 1:
                default = call.args[1]
            value = self._literal(default)
            if isinstance(name, str):
                self.declared_arguments.append(name)
            if isinstance(name, str) and isinstance(value, str):
                self.defaults[name] = value

    def _calls(self, *names: str) -> list[ast.Call]:
        return [n for n in ast.walk(self.tree) if isinstance(n, ast.Call) and _call_name(n) in names]

    @staticmethod
    def _literal(node: ast.expr | None):
        if node is None:
            return None
        try:
            return ast.literal_eval(node)
        except ValueError:
            return None

    def evaluate(self, node: ast.expr | None, env: dict[str, object] | None = None):
        """Static value of an expression: str, list/tuple of values, or None when it cannot be known.

        Understands literals, LaunchConfiguration('x') (and one-argument helpers that wrap it, as in an
        OpaqueFunction) with a literal default, names assigned once in the file, and list comprehensions over
        literal sequences (e.g. `[(k, arg(k)) for k in ("image", "depth")]`).
        """
        env = env or {}
        if node is None:
            return None
        if isinstance(node, ast.Constant):
            return node.value if isinstance(node.value, str) else None
        if isinstance(node, ast.Name):
            if node.id in env:
                return env[node.id]
            value = self.assignments.get(node.id)
            return self.evaluate(value, env) if value is not None else None
        if isinstance(node, ast.List | ast.Tuple):
            return [self.evaluate(e, env) for e in node.elts]
        if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
            if _call_name(node) in {"LaunchConfiguration"} | self.config_wrappers:
                return self.defaults.get(self.evaluate(node.args[0], env))
            return None
        if isinstance(node, ast.ListComp) and len(node.generators) == 1:
            gen = node.generators[0]
            items = self.evaluate(gen.iter, env)
            if not isinstance(gen.target, ast.Name) or not isinstance(items, list) or gen.ifs:
                return None
            return [self.evaluate(node.elt, {**env, gen.target.id: item}) for item in items]
        return None

    def resolve(self, node: ast.expr | None) -> str | None:
        value = self.evaluate(node)
        return value if isinstance(value, str) else None

    def nodes(self) -> list[LaunchNode]:
        found = []
        for call in self._calls(*NODE_CLASSES):
            ns = self.resolve(_kw(call, "namespace"))
            node = LaunchNode(
                file=self.path.name,
                package=self.resolve(_kw(call, "package")),
                executable=self.resolve(_kw(call, "executable") or _kw(call, "plugin")),
                name=self.resolve(_kw(call, "name")),
                namespace=ns or "",
            )
            if _kw(call, "namespace") is not None and ns is None:
                node.unresolved.append("namespace")
            remaps = _kw(call, "remappings")
            pairs = self.evaluate(remaps) if remaps is not None else []
            if not isinstance(pairs, list):
                node.unresolved.append(f"remappings={ast.unparse(remaps)}")
                pairs = []
            for pair in pairs:
                if isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair):
                    node.remappings[pair[0]] = pair[1]
                else:
                    node.unresolved.append(f"remapping {pair!r}")
            found.append(node)
        return found

    def referenced_files(self) -> list[str]:
        """Every string literal (including LaunchConfiguration defaults) naming a .yaml or .rviz file."""
        names = [
            n.value for n in ast.walk(self.tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        names += list(self.defaults.values())
        # Whitespace means prose (an argument description), not a path.
        return sorted({n for n in names if n.endswith((".yaml", ".rviz")) and not re.search(r"\s", n)})


def declared_parameters() -> set[str]:
    """Names the node declares: *Params dataclass fields (params.py) and literal declare_parameter calls."""
    names: set[str] = set()
    for module in NODE_MODULES:
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.name.endswith("Params"):
                names |= {
                    s.target.id
                    for s in node.body
                    if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)
                }
            elif (
                isinstance(node, ast.Call)
                and _call_name(node) == "declare_parameter"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                names.add(node.args[0].value)
    return names


def node_topics() -> set[str]:
    """Topic names as the node code writes them: the topic argument of create_publisher /
    create_lifecycle_publisher / create_subscription, and (Type, "name") pairs (synchronized inputs)."""
    topics: set[str] = set()
    for module in NODE_MODULES:
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _call_name(node) in {
                "create_publisher",
                "create_lifecycle_publisher",
                "create_subscription",
            }:
                arg = node.args[1] if len(node.args) > 1 else _kw(node, "topic")
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    topics.add(arg.value)
            elif isinstance(node, ast.Tuple) and len(node.elts) == 2:
                kind, name = node.elts
                if (
                    isinstance(kind, ast.Name)
                    and kind.id[:1].isupper()
                    and isinstance(name, ast.Constant)
                    and isinstance(name.value, str)
                    and re.fullmatch(r"~?/?[a-z][a-z0-9_/]*", name.value)
                ):
                    topics.add(name.value)
    return topics


def resolve_topic(topic: str, node: LaunchNode) -> str:
    """ROS 2 name resolution of a node's topic after its launch remappings."""
    topic = node.remappings.get(topic, topic)
    ns = "/" + node.namespace.strip("/") if node.namespace.strip("/") else ""
    if topic.startswith("/"):
        return topic
    if topic.startswith("~"):
        return f"{ns}/{node.name or node.executable}/{topic.lstrip('~/')}"
    return f"{ns}/{topic}"


def rviz_topics(path: Path) -> list[str]:
    """Topic values of every display, including displays nested in groups."""
    config = yaml.safe_load(path.read_text())
    topics: list[str] = []

    def walk(value) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                if key == "Topic":
                    topic = sub.get("Value") if isinstance(sub, dict) else sub
                    if isinstance(topic, str) and topic:
                        topics.append(topic)
                else:
                    walk(sub)
        elif isinstance(value, list):
            for sub in value:
                walk(sub)

    walk(config.get("Visualization Manager", {}).get("Displays", []))
    return topics


def _our_nodes() -> list[LaunchNode]:
    return [n for f in LAUNCH_FILES for n in LaunchFile(f).nodes() if n.package == PACKAGE]


def _skip_without(files: list[Path], what: str) -> None:
    if not files:
        pytest.skip(f"no {what} in the repository yet (the node issue adds them)")


# ----------------------------------------------------------------------------------------------------- tests
def test_entry_points_match_design() -> None:
    assert console_scripts() == design_executables()


def test_entry_point_modules_define_main() -> None:
    """A console script whose module or function is missing fails only when someone runs it; catch it here."""
    missing = []
    for script, target in console_scripts().items():
        module, func = target.split(":")
        top, *rest = module.split(".")
        rel = Path(package_dirs().get(top, top), *rest)
        file = REPO_ROOT / rel.with_suffix(".py")
        if not file.is_file():
            file = REPO_ROOT / rel / "__init__.py"
        if not file.is_file():
            missing.append(f"{script}: no module {module}")
            continue
        tree = ast.parse(file.read_text())
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        defined |= {a.asname or a.name for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
        if func not in defined:
            missing.append(f"{script}: {module} defines no {func}()")
    assert not missing, missing


def test_launch_executables_exist() -> None:
    _skip_without(LAUNCH_FILES, "launch/*.py")
    scripts = set(console_scripts())
    runtime = {d.name for d in parse_package(str(REPO_ROOT / "package.xml")).exec_depends}
    nodes = [n for f in LAUNCH_FILES for n in LaunchFile(f).nodes()]
    assert nodes, "no Node/LifecycleNode in any launch file"
    for node in nodes:
        assert node.package is not None and node.executable is not None, f"{node.file}: unresolvable node"
        if node.package == PACKAGE:
            assert node.executable in scripts, f"{node.file}: {node.executable} is not a console script"
        else:
            assert node.package in runtime, (
                f"{node.file}: {node.package} is not an exec_depend in package.xml"
            )
    assert _our_nodes(), "no launch file starts a cleanpose_ros node"


def test_launch_parameter_and_rviz_files_exist() -> None:
    _skip_without(LAUNCH_FILES, "launch/*.py")
    shipped = {p.name for p in CONFIG_FILES} | {p.name for p in RVIZ_FILES}
    for path in LAUNCH_FILES:
        for ref in LaunchFile(path).referenced_files():
            assert Path(ref).name in shipped, f"{path.name} references {ref}, which config/ and rviz/ lack"


def test_config_parameters_are_declared() -> None:
    _skip_without(CONFIG_FILES, "config/*.yaml")
    declared = declared_parameters() | IMPLICIT_PARAMETERS
    assert len(declared) > len(IMPLICIT_PARAMETERS), "found no parameter declarations in cleanpose_ros/"
    node_names = {n.name for n in _our_nodes() if n.name}
    for path in CONFIG_FILES:
        content = yaml.safe_load(path.read_text()) or {}
        sections = {k: v for k, v in content.items() if isinstance(v, dict) and "ros__parameters" in v}
        assert sections, f"{path.name}: no <node>: ros__parameters: section"
        for key, section in sections.items():
            last = key.rstrip("/").split("/")[-1]
            assert last in {"**", "*"} | node_names or not node_names, (
                f"{path.name}: section {key!r} matches no node name of the launch files {sorted(node_names)}"
            )
            unknown = []
            for name, value in section["ros__parameters"].items():
                if name == "qos_overrides":  # QoSOverridingOptions: declared by rclpy per topic
                    continue
                flat = [f"{name}.{sub}" for sub in value] if isinstance(value, dict) else [name]
                unknown += [p for p in flat if p not in declared and p.split(".")[0] not in declared]
            assert not unknown, f"{path.name}: parameters the node does not declare: {unknown}"


def test_launch_repeats_no_parameter_default() -> None:
    """cleanpose_ros/params.py is the one source of node defaults (config/cleanpose.yaml is generated from
    it): a launch argument named after a node parameter defaults to empty (= the params file's value), no
    parameter value is written into a launch file as a literal, and our nodes get the params file."""
    _skip_without(LAUNCH_FILES, "launch/*.py")
    names = declared_parameters()
    for path in LAUNCH_FILES:
        launch = LaunchFile(path)
        repeated = {k: v for k, v in launch.defaults.items() if k in names and v != ""}
        assert repeated == {}, f"{path.name}: launch arguments repeat node defaults {repeated}"
        literals = [
            key.value
            for d in ast.walk(launch.tree)
            if isinstance(d, ast.Dict)
            for key, value in zip(d.keys, d.values)
            if isinstance(key, ast.Constant) and key.value in names and isinstance(value, ast.Constant)
        ]
        assert literals == [], f"{path.name}: literal parameter values {literals}"
        for call in launch._calls(*NODE_CLASSES):
            if launch.evaluate(_kw(call, "package")) == PACKAGE:
                given = _kw(call, "parameters")
                assert given is not None and "params_file" in ast.unparse(given), (
                    f"{path.name}: a {PACKAGE} node without the params_file argument in its parameters"
                )


def test_rviz_topics_are_node_topics() -> None:
    _skip_without(RVIZ_FILES, "rviz/*.rviz")
    _skip_without(LAUNCH_FILES, "launch/*.py")
    nodes = _our_nodes()
    topics = node_topics()
    assert {"image", "depth", "camera_info", "detections", "~/poses", "~/markers"} <= topics, topics
    resolved = {resolve_topic(t, n) for n in nodes for t in topics}
    for node in nodes:
        assert not node.unresolved, f"{node.file}: cannot resolve {node.unresolved} statically"
    for path in RVIZ_FILES:
        shown = rviz_topics(path)
        assert shown, f"{path.name}: no display with a topic"
        stray = [t for t in shown if t not in resolved]
        assert not stray, (
            f"{path.name}: topics no launched cleanpose node uses: {stray}; node: {sorted(resolved)}"
        )


# ------------------------------------------------------------------------------- the checker checks itself
SAMPLE_LAUNCH = """
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value="robot1"),
        DeclareLaunchArgument("image_topic", default_value="/camera/color/image_raw"),
        DeclareLaunchArgument("params_file", default_value="cleanpose.yaml"),
        LifecycleNode(package="cleanpose_ros", executable="cleanpose_node", name="cleanpose",
                      namespace=LaunchConfiguration("namespace"),
                      parameters=[LaunchConfiguration("params_file")],
                      remappings=[("image", LaunchConfiguration("image_topic")), ("depth", "/d")]),
        Node(package="rviz2", executable="rviz2", arguments=["-d", "cleanpose.rviz"]),
    ])
"""


def test_launch_parser_resolves_names(tmp_path: Path) -> None:
    path = tmp_path / "sample.launch.py"
    path.write_text(SAMPLE_LAUNCH)
    launch = LaunchFile(path)
    ours, rviz = launch.nodes()
    assert (ours.package, ours.executable, ours.name, ours.namespace) == (
        "cleanpose_ros",
        "cleanpose_node",
        "cleanpose",
        "robot1",
    )
    assert ours.remappings == {"image": "/camera/color/image_raw", "depth": "/d"}
    assert (rviz.package, rviz.executable) == ("rviz2", "rviz2")
    assert launch.referenced_files() == ["cleanpose.rviz", "cleanpose.yaml"]
    assert resolve_topic("image", ours) == "/camera/color/image_raw"
    assert resolve_topic("camera_info", ours) == "/robot1/camera_info"
    assert resolve_topic("~/poses", ours) == "/robot1/cleanpose/poses"
    assert resolve_topic("/tf", ours) == "/tf"


def test_rviz_topic_walk_finds_nested_displays(tmp_path: Path) -> None:
    path = tmp_path / "x.rviz"
    path.write_text(
        yaml.safe_dump(
            {
                "Visualization Manager": {
                    "Displays": [
                        {"Class": "rviz_default_plugins/Image", "Topic": {"Value": "/a/debug_image"}},
                        {"Class": "rviz_common/Group", "Displays": [{"Topic": {"Value": "/a/markers"}}]},
                        {"Class": "rviz_default_plugins/TF"},
                    ]
                }
            }
        )
    )
    assert rviz_topics(path) == ["/a/debug_image", "/a/markers"]


SAMPLE_OPAQUE_LAUNCH = """
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

def _nodes(context):
    def arg(name):
        return LaunchConfiguration(name).perform(context)
    remaps = [(k, arg(k)) for k in ("image", "camera_info")]
    return [LifecycleNode(package="cleanpose_ros", executable="cleanpose_node", name="cleanpose_node",
                          namespace=arg("namespace"), remappings=remaps)]

def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("image", default_value="/cam/image"),
        DeclareLaunchArgument("camera_info", default_value="/cam/info"),
        OpaqueFunction(function=_nodes),
    ])
"""


def test_launch_parser_follows_opaque_function_helpers(tmp_path: Path) -> None:
    path = tmp_path / "opaque.launch.py"
    path.write_text(SAMPLE_OPAQUE_LAUNCH)
    (node,) = LaunchFile(path).nodes()
    assert node.unresolved == []
    assert node.namespace == ""
    assert node.remappings == {"image": "/cam/image", "camera_info": "/cam/info"}
    assert resolve_topic("~/markers", node) == "/cleanpose_node/markers"
    assert resolve_topic("depth", node) == "/depth"


def test_readme_documents_every_launch_argument() -> None:
    _skip_without(LAUNCH_FILES, "launch/*.py")
    readme = (REPO_ROOT / "README.md").read_text()
    table = set(
        re.findall(r"^\| `(\w+)` \|", readme.split("Launch arguments\n", 1)[1].split("\n### ", 1)[0], re.M)
    )
    declared = {name for path in LAUNCH_FILES for name in LaunchFile(path).declared_arguments}
    assert table == declared, f"README launch table {sorted(table)} != launch arguments {sorted(declared)}"
