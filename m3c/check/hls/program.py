"""The declarations of a preprocessed kernel: functions with their HLS pragmas, namespace-scope
constants and enumerators, global arrays (the lookup tables) and type widths."""

from __future__ import annotations

from dataclasses import dataclass, field

from tree_sitter import Node

from m3c.check.hls.values import BINARY, PRIMITIVE_WIDTHS, UNARY, integer_literal

DECLARATOR_WRAPPERS = ("pointer_declarator", "reference_declarator", "init_declarator",
                       "array_declarator", "function_declarator", "parenthesized_declarator")


@dataclass(frozen=True)
class Pragma:
    """`#pragma HLS kind word key=value ...`."""

    kind: str
    options: dict[str, str]
    flags: frozenset[str]
    node: Node


def parse_pragma(node: Node) -> Pragma | None:
    """The HLS pragma a `preproc_call` line is, if it is one."""
    if node.type != "preproc_call" or node.child_by_field_name("directive").text != b"#pragma":
        return None
    argument = node.child_by_field_name("argument")
    words = argument.text.decode().split() if argument is not None else []
    if len(words) < 2 or words[0].upper() != "HLS":
        return None
    options = dict(word.split("=", 1) for word in words[2:] if "=" in word)
    flags = frozenset(word for word in words[2:] if "=" not in word)
    return Pragma(words[1].lower(), {k.lower(): v for k, v in options.items()}, flags, node)


def body_pragmas(body: Node) -> list[Pragma]:
    """Pragmas written directly in a block (not in its nested blocks)."""
    return [p for p in (parse_pragma(child) for child in body.named_children) if p is not None]


def all_pragmas(node: Node) -> list[Pragma]:
    found: list[Pragma] = []
    stack = [node]
    while stack:
        current = stack.pop()
        pragma = parse_pragma(current)
        if pragma is not None:
            found.append(pragma)
        stack.extend(current.named_children)
    return found


def declarator_name(node: Node | None) -> str | None:
    """The identifier a (possibly nested) declarator declares."""
    while node is not None and node.type in DECLARATOR_WRAPPERS:
        node = node.child_by_field_name("declarator") or (
            node.named_children[0] if node.named_children else None)
    if node is None:
        return None
    if node.type == "qualified_identifier":
        return node.text.decode()
    return node.text.decode() if node.type in ("identifier", "field_identifier",
                                               "type_identifier") else None


def array_dims(node: Node) -> tuple[Node, ...]:
    """Size expressions of an array declarator, outermost dimension first."""
    sizes = []
    while node is not None and node.type in DECLARATOR_WRAPPERS:
        if node.type == "array_declarator":
            sizes.append(node.child_by_field_name("size"))
        node = node.child_by_field_name("declarator")
    return tuple(reversed(sizes))


def is_pointer(node: Node) -> bool:
    while node is not None and node.type in DECLARATOR_WRAPPERS:
        if node.type == "pointer_declarator":
            return True
        node = node.child_by_field_name("declarator")
    return False


def has_specifier(declaration: Node, word: str) -> bool:
    return any(child.type in ("storage_class_specifier", "type_qualifier")
               and child.text.decode() == word for child in declaration.children)


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "array", "pointer" or "value" (references are values: they alias scalars)
    type_text: str


@dataclass
class Function:
    """A function definition and the pragmas written in its body."""

    name: str  # qualified: m3c::matmul
    node: Node
    params: tuple[Param, ...]
    template_params: tuple[str, ...]
    return_type: str
    pragmas: list[Pragma] = field(default_factory=list)  # anywhere in the body

    @property
    def short_name(self) -> str:
        return self.name.rsplit("::", 1)[-1]

    @property
    def body(self) -> Node:
        return self.node.child_by_field_name("body")

    @property
    def inline_off(self) -> bool:
        return any(p.kind == "inline" and "off" in p.flags for p in body_pragmas(self.body))

    def allocation_limits(self) -> dict[str, int]:
        """`allocation function instances=F limit=N` of the function's own scope: F -> N."""
        limits = {}
        for pragma in body_pragmas(self.body):
            instances, limit = pragma.options.get("instances"), pragma.options.get("limit")
            if pragma.kind == "allocation" and "function" in pragma.flags and instances and \
                    limit is not None and limit.isdigit():
                limits[instances.rsplit("::", 1)[-1]] = int(limit)
        return limits

    def array_pragmas(self, variable: str) -> list[Pragma]:
        return [p for p in self.pragmas if p.kind in ("array_partition", "bind_storage")
                and p.options.get("variable") == variable]


@dataclass(frozen=True)
class GlobalArray:
    name: str
    dims: tuple[Node, ...]
    const: bool  # a `const` table with an initialiser: a ROM
    node: Node


@dataclass
class Program:
    functions: dict[str, list[Function]] = field(default_factory=dict)  # by short name
    constants: dict[str, int] = field(default_factory=dict)
    arrays: dict[str, GlobalArray] = field(default_factory=dict)
    widths: dict[str, int] = field(default_factory=dict)  # typedef name -> bits

    def definitions(self, name: str) -> list[Function]:
        return self.functions.get(name.rsplit("::", 1)[-1], [])

    def constant(self, node: Node | None, bound: dict[str, int] | None = None) -> int | None:
        """A constant expression's value from namespace-scope constants (and `bound`)."""
        return constant_value(node, {**self.constants, **(bound or {})})

    def type_width(self, type_text: str) -> int | None:
        words = " ".join(w for w in type_text.replace("&", " ").split()
                         if w not in ("const", "static", "constexpr", "volatile"))
        if words in PRIMITIVE_WIDTHS:
            return PRIMITIVE_WIDTHS[words]
        return self.widths.get(words.rsplit("::", 1)[-1])


def constant_value(node: Node | None, names: dict[str, int]) -> int | None:
    """The integer value of a constant expression, or None when it is not one."""
    if node is None:
        return None
    kind = node.type
    if kind == "number_literal":
        return integer_literal(node.text.decode())
    if kind in ("identifier", "qualified_identifier", "type_identifier"):
        return names.get(node.text.decode().rsplit("::", 1)[-1])
    if kind == "parenthesized_expression":
        return constant_value(node.named_children[0], names)
    if kind == "true":
        return 1
    if kind == "false":
        return 0
    if kind == "unary_expression":
        operand = constant_value(node.child_by_field_name("argument"), names)
        operator = node.child_by_field_name("operator").text.decode()
        return None if operand is None or operator not in UNARY else UNARY[operator](operand)
    if kind == "binary_expression":
        left = constant_value(node.child_by_field_name("left"), names)
        right = constant_value(node.child_by_field_name("right"), names)
        operator = node.child_by_field_name("operator").text.decode()
        if left is None or right is None or operator not in BINARY:
            return None
        return BINARY[operator](left, right)
    if kind == "conditional_expression":
        condition = constant_value(node.child_by_field_name("condition"), names)
        if condition is None:
            return None
        return constant_value(node.child_by_field_name("consequence" if condition else
                                                       "alternative"), names)
    return None


def read_program(root: Node) -> Program:
    """Every declaration of the translation unit the checker needs."""
    program = Program()
    _read_scope(root, "", program)
    return program


def _read_scope(scope: Node, namespace: str, program: Program) -> None:
    for node in scope.named_children:
        if node.type == "namespace_definition":
            name = node.child_by_field_name("name")
            inner = f"{namespace}{name.text.decode()}::" if name is not None else namespace
            _read_scope(node.child_by_field_name("body"), inner, program)
        elif node.type == "function_definition":
            _add_function(node, (), namespace, program)
        elif node.type == "template_declaration":
            _read_template(node, namespace, program)
        elif node.type == "declaration":
            _read_declaration(node, program)
        elif node.type == "type_definition":
            _read_typedef(node, program)
        if node.type in ("declaration", "type_definition", "enum_specifier"):
            _read_enums(node, program)


def _read_template(node: Node, namespace: str, program: Program) -> None:
    names = []
    for parameter in node.child_by_field_name("parameters").named_children:
        name = declarator_name(parameter.child_by_field_name("declarator"))
        if name is None:  # typename T: the name is its type_identifier
            name = next((c.text.decode() for c in parameter.named_children
                         if c.type == "type_identifier"), None)
        if name is not None:
            names.append(name)
    inner = next((c for c in node.named_children if c.type == "function_definition"), None)
    if inner is not None:
        _add_function(inner, tuple(names), namespace, program)


def _add_function(node: Node, template_params: tuple[str, ...], namespace: str,
                  program: Program) -> None:
    declarator = node.child_by_field_name("declarator")
    while declarator is not None and declarator.type != "function_declarator":
        declarator = declarator.child_by_field_name("declarator")
    if declarator is None or node.child_by_field_name("body") is None:
        return
    name = declarator_name(declarator.child_by_field_name("declarator"))
    if name is None:
        return
    params = []
    for parameter in declarator.child_by_field_name("parameters").named_children:
        inner = parameter.child_by_field_name("declarator")
        pname = declarator_name(inner)
        if pname is None:
            continue
        kind = "array" if array_dims(inner) else "pointer" if is_pointer(inner) else "value"
        params.append(Param(pname, kind, parameter.child_by_field_name("type").text.decode()))
    qualified = name if "::" in name else namespace + name
    return_type = node.child_by_field_name("type")
    function = Function(qualified, node, tuple(params), template_params,
                        return_type.text.decode() if return_type is not None else "",
                        all_pragmas(node.child_by_field_name("body")))
    program.functions.setdefault(function.short_name, []).append(function)


def _read_declaration(node: Node, program: Program) -> None:
    constant = has_specifier(node, "constexpr") or has_specifier(node, "const")
    for declarator in node.children_by_field_name("declarator"):
        name = declarator_name(declarator)
        if name is None:
            continue
        dims = array_dims(declarator)
        if dims:
            program.arrays[name] = GlobalArray(name, dims, constant, node)
        elif constant and declarator.type == "init_declarator":
            value = program.constant(declarator.child_by_field_name("value"))
            if value is not None:
                program.constants[name] = value


def _read_typedef(node: Node, program: Program) -> None:
    type_node = node.child_by_field_name("type")
    name = declarator_name(node.child_by_field_name("declarator"))
    if name is None or type_node is None:
        return
    width = program.type_width(type_node.text.decode())
    if width is None and type_node.type in ("template_type", "qualified_identifier"):
        arguments = next((c for c in type_node.named_children
                          if c.type == "template_argument_list"), None)
        first = arguments.named_children[0] if arguments is not None and \
            arguments.named_children else None
        width = program.constant(first.named_children[0] if first is not None and
                                 first.type == "type_descriptor" else first)
    if width is not None:
        program.widths[name] = width


def _read_enums(node: Node, program: Program) -> None:
    stack = [node]
    while stack:
        current = stack.pop()
        if current.type == "enumerator_list":
            following = 0
            for enumerator in current.named_children:
                if enumerator.type != "enumerator":
                    continue
                given = program.constant(enumerator.child_by_field_name("value"))
                following = given if given is not None else following
                program.constants[enumerator.child_by_field_name("name").text.decode()] = \
                    following
                following += 1
        else:
            stack.extend(current.named_children)
