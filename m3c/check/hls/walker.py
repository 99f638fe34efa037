"""A walk over the kernel from its top function, as Vitis elaborates it: functions without
`inline off` are inlined into their callers (arguments bound to parameters, template values to
template parameters), `inline off` functions are entered once per distinct array binding and
recorded as calls of their nearest non-inlined caller, and in a pipelined loop every inner loop
is unrolled and every array access of one iteration recorded with its index values."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

from tree_sitter import Node

from m3c.check.hls.arrays import ArrayInfo, partitioned
from m3c.check.hls.program import (
    Function,
    Pragma,
    Program,
    array_dims,
    body_pragmas,
    declarator_name,
    has_specifier,
)
from m3c.check.hls.source import TranslationUnit
from m3c.check.hls.values import (
    BINARY,
    UNARY,
    WIDE_BITS,
    Value,
    integer_literal,
    linear_terms,
    literal_width,
)

MAX_UNROLL = 4096  # trip count beyond which an inner loop is not unrolled here
MAX_WORK = 2_000_000  # expressions evaluated for one pipelined loop before giving up
MAX_DEPTH = 64  # nested inlined calls (recursion is not synthesisable)


class TooComplex(Exception):
    """The walk of one pipelined loop exceeded what the checker evaluates."""


@dataclass(frozen=True)
class ArrayRef:
    """An array, or the sub-array at the leading indices `prefix`."""

    array: ArrayInfo
    prefix: tuple[Value, ...] = ()


@dataclass
class Access:
    array: ArrayInfo
    index: tuple[Value, ...]
    write: bool
    where: str


@dataclass
class Iteration:
    """What one iteration of a pipelined loop does, its inner loops unrolled."""

    function: str  # where the loop is written
    loop: str  # its label, or file:line
    context: str  # the non-inlined function it runs in
    target_ii: int
    covered: dict[str, Pragma] = field(default_factory=dict)  # array key -> dependence pragma
    accesses: dict[tuple, Access] = field(default_factory=dict)
    divisions: dict[str, tuple[Value, str]] = field(default_factory=dict)  # text -> (value, where)
    wide_multiplies: dict[str, tuple[Value, str]] = field(default_factory=dict)
    unknowns: list[str] = field(default_factory=list)
    local_arrays: set[str] = field(default_factory=set)  # declared inside the loop body
    divider_recurrence: bool = False  # a carried variable is computed through a divider
    work: int = 0

    def record(self, access: Access) -> None:
        key = (access.array.key, tuple(v.text for v in access.index), access.write)
        self.accesses.setdefault(key, access)


class Scope:
    def __init__(self, parent: Scope | None = None) -> None:
        self.parent = parent
        self.values: dict[str, Value] = {}
        self.arrays: dict[str, ArrayRef] = {}

    def value(self, name: str) -> Value | None:
        return self._find("values", name)

    def array(self, name: str) -> ArrayRef | None:
        return self._find("arrays", name)

    def _find(self, table: str, name: str):
        """`name` in this scope's `table` or the nearest enclosing scope's."""
        scope: Scope | None = self
        while scope is not None:
            if name in getattr(scope, table):
                return getattr(scope, table)[name]
            scope = scope.parent
        return None


@dataclass
class Frame:
    function: Function
    scope: Scope
    returns: list[Value] = field(default_factory=list)


class Walker:
    """Walks the kernel from its top function; see the module docstring."""

    def __init__(self, program: Program, unit: TranslationUnit) -> None:
        self.program = program
        self.unit = unit
        self.calls: dict[str, set[str]] = {}  # non-inlined function -> inline-off callees
        self.loops: list[Iteration] = []
        self.unknowns: list[tuple[str, str]] = []  # (where, what) outside pipelined loops
        self.entered: set[tuple] = set()
        self.iteration: Iteration | None = None
        self.frames: list[Frame] = []
        self.context = ""
        self.counter = itertools.count()
        self.global_arrays: dict[str, ArrayRef] = {}

    # -- functions --------------------------------------------------------------------------

    def run(self, top: Function) -> None:
        scope = Scope()
        for param in top.params:
            if param.kind != "value":
                info = ArrayInfo(f"{top.name}::{param.name}", param.name, (None,),
                                 interface=True)
                scope.arrays[param.name] = ArrayRef(info)
        self.calls.setdefault(top.name, set())
        self._enter(top, scope)

    def _enter(self, function: Function, scope: Scope) -> None:
        """Walk a non-inlined function's body (its pipelined loops analysed; a pipelined
        function's body analysed as one iteration of a pipeline)."""
        outer, caller = self.context, self.iteration
        self.context = function.name
        self.frames.append(Frame(function, scope))
        pipeline = _function_pipeline(function)
        iteration = None
        if pipeline is not None:
            target = self.constant_text(pipeline.options.get("ii", "1"))
            iteration = Iteration(function.name, "(function)", function.name, target or 1)
        self.iteration = iteration
        try:
            self.statement(function.body)
        except TooComplex:
            iteration.unknowns.append("too large to evaluate statically")
        finally:
            self.frames.pop()
            self.context, self.iteration = outer, caller
        if iteration is not None:
            self.loops.append(iteration)

    @property
    def frame(self) -> Frame:
        return self.frames[-1]

    def where(self, node: Node) -> str:
        return self.unit.locate(node)

    def unknown(self, node: Node, what: str) -> None:
        if self.iteration is not None:
            self.iteration.unknowns.append(f"{what} ({self.where(node)})")
        else:
            self.unknowns.append((self.where(node), what))

    # -- statements -------------------------------------------------------------------------

    def statement(self, node: Node, label: str | None = None) -> None:
        self._count()
        kind = node.type
        if kind == "compound_statement":
            self._block(node)
        elif kind == "declaration":
            self._declaration(node)
        elif kind == "expression_statement":
            for child in node.named_children:
                self.expr(child)
        elif kind == "if_statement":
            self._if(node)
        elif kind == "for_statement":
            self._for(node, label)
        elif kind == "labeled_statement":
            inner = node.named_children[-1]
            self.statement(inner, node.child_by_field_name("label").text.decode())
        elif kind in ("while_statement", "do_statement"):
            if self.iteration is not None:
                self.unknown(node, "a while/do loop inside a pipelined loop cannot be unrolled")
            for child in node.named_children:
                self._child(child)
        elif kind == "return_statement":
            value = node.named_children[0] if node.named_children else None
            if value is not None:
                self.frame.returns.append(self.expr(value))
        elif kind not in ("preproc_call", "comment", "break_statement", "continue_statement",
                          "type_definition", "alias_declaration", "static_assert_declaration"):
            for child in node.named_children:
                self._child(child)

    def _child(self, node: Node) -> None:
        if node.type.endswith("statement") or node.type == "declaration":
            self.statement(node)
        elif node.type == "condition_clause":
            for child in node.named_children:
                self._child(child)
        elif node.is_named and node.type not in ("preproc_call", "comment"):
            self.expr(node)

    def _block(self, node: Node) -> None:
        frame = self.frame
        frame.scope = Scope(frame.scope)
        try:
            for child in node.named_children:
                self.statement(child)
        finally:
            frame.scope = frame.scope.parent

    def _declaration(self, node: Node) -> None:
        constant = has_specifier(node, "const") or has_specifier(node, "constexpr")
        static = has_specifier(node, "static")
        type_node = node.child_by_field_name("type")
        width = self.program.type_width(type_node.text.decode()) if type_node else None
        for declarator in node.children_by_field_name("declarator"):
            name = declarator_name(declarator)
            if name is None:
                continue
            initial = declarator.child_by_field_name("value") \
                if declarator.type == "init_declarator" else None
            value = self.expr(initial) if initial is not None else None
            dims = array_dims(declarator)
            if dims:
                self._local_array(name, dims, static, constant and initial is not None)
                continue
            if constant and value is not None:
                self.frame.scope.values[name] = replace(value, width=width or value.width)
            else:
                self.frame.scope.values[name] = self._opaque(name, width)

    def _local_array(self, name: str, dims: tuple[Node, ...], static: bool, rom: bool) -> None:
        function = self.frame.function
        key = f"{function.name}::{name}" + ("" if static else f"#{next(self.counter)}")
        sizes = tuple(self.constant(size) for size in dims)
        info = partitioned(key, name, sizes, function.array_pragmas(name), rom)
        if self.iteration is not None:  # a fresh array every iteration: nothing carried
            self.iteration.local_arrays.add(key)
        self.frame.scope.arrays[name] = ArrayRef(info)

    def _opaque(self, name: str, width: int | None) -> Value:
        """A variable whose value the checker does not follow (assigned at run time)."""
        inside = self.iteration is not None
        return Value(f"{name}@{next(self.counter)}", None, inside, False, width)

    def _if(self, node: Node) -> None:
        condition = self.expr(node.child_by_field_name("condition"))
        branches = [node.child_by_field_name("consequence"),
                    node.child_by_field_name("alternative")]
        if condition.const is not None:  # decided at compile time: the other branch vanishes
            branches = [branches[0] if condition.const else branches[1]]
        for branch in branches:
            if branch is None:
                continue
            if branch.type == "else_clause":
                branch = branch.named_children[0]
            self.statement(branch)

    # -- loops ------------------------------------------------------------------------------

    def _for(self, node: Node, label: str | None) -> None:
        body = node.child_by_field_name("body")
        pipeline = next((p for p in body_pragmas(body) if p.kind == "pipeline"), None) \
            if body is not None and body.type == "compound_statement" else None
        if self.iteration is not None:
            self._unroll(node)
        elif pipeline is not None and "off" not in pipeline.flags:
            self._pipelined(node, label, pipeline)
        else:
            self._walk_loop_once(node)

    def _walk_loop_once(self, node: Node) -> None:
        frame = self.frame
        frame.scope = Scope(frame.scope)
        try:
            for part in ("initializer", "condition", "update"):
                child = node.child_by_field_name(part)
                if child is not None:
                    self._child(child)
            self.statement(node.child_by_field_name("body"))
        finally:
            frame.scope = frame.scope.parent

    def _pipelined(self, node: Node, label: str | None, pipeline: Pragma) -> None:
        body = node.child_by_field_name("body")
        target = self.constant_text(pipeline.options.get("ii", "1"))
        iteration = Iteration(self.frame.function.name, label or self.where(node), self.context,
                              target or 1)
        frame = self.frame
        frame.scope = Scope(frame.scope)
        try:
            initializer = node.child_by_field_name("initializer")
            if initializer is not None:
                self._child(initializer)
            for name in _assigned_names(node):  # carried from one iteration into the next
                if frame.scope.value(name) is not None:
                    old = frame.scope.value(name)
                    frame.scope.values[name] = Value(f"{name}'", None, True, True, old.width)
            induction = declarator_name(initializer.child_by_field_name("declarator")) \
                if initializer is not None and initializer.type == "declaration" else None
            if induction is not None:
                frame.scope.values[induction] = Value(f"{induction}'", None, True, False, 32)
            for pragma in body_pragmas(body):
                ref = frame.scope.array(pragma.options.get("variable", "")) or \
                    self._global_array(pragma.options.get("variable", ""))
                if pragma.kind == "dependence" and ref is not None:
                    iteration.covered[ref.array.key] = pragma
            self.iteration = iteration
            try:
                for part in ("condition", "update"):
                    if node.child_by_field_name(part) is not None:
                        self._child(node.child_by_field_name(part))
                self.statement(body)
            except TooComplex:
                iteration.unknowns.append("too large to evaluate statically")
        finally:
            self.iteration = None
            frame.scope = frame.scope.parent
        self.loops.append(iteration)

    def _unroll(self, node: Node) -> None:
        """An inner loop of a pipelined loop: fully unrolled, one walk per iteration."""
        frame = self.frame
        frame.scope = Scope(frame.scope)
        try:
            counter = self._trip_values(node)
            if counter is None:
                self.unknown(node, "an inner loop whose trip count is not a compile-time "
                                   "constant cannot be unrolled")
                self.statement(node.child_by_field_name("body"))
                return
            name, values = counter
            for number in values:
                frame.scope.values[name] = Value.of(number)
                self.statement(node.child_by_field_name("body"))
        finally:
            frame.scope = frame.scope.parent

    def _trip_values(self, node: Node) -> tuple[str, list[int]] | None:
        initializer = node.child_by_field_name("initializer")
        condition = node.child_by_field_name("condition")
        update = node.child_by_field_name("update")
        if initializer is None or initializer.type != "declaration" or condition is None:
            return None
        declarator = initializer.child_by_field_name("declarator")
        name = declarator_name(declarator)
        start = self.expr(declarator.child_by_field_name("value")) \
            if declarator.type == "init_declarator" else None
        step = _step_of(update, name)
        if name is None or start is None or start.const is None or step is None:
            return None
        values, current = [], start.const
        for _ in range(MAX_UNROLL):
            self.frame.scope.values[name] = Value.of(current)
            test = self.expr(condition)
            if test.const is None:
                return None
            if not test.const:
                return name, values
            values.append(current)
            current += step
        return None

    # -- expressions ------------------------------------------------------------------------

    def _count(self) -> None:
        if self.iteration is not None:
            self.iteration.work += 1
            if self.iteration.work > MAX_WORK:
                raise TooComplex

    def constant(self, node: Node | None) -> int | None:
        return self.expr(node).const if node is not None else None

    def constant_text(self, text: str) -> int | None:
        number = integer_literal(text)
        return number if number is not None else self.program.constants.get(text)

    def expr(self, node: Node) -> Value:
        self._count()
        handler = EXPRESSIONS.get(node.type)
        if handler is not None:
            return handler(self, node)
        parts = [self.expr(child) for child in node.named_children]
        return Value.derived(node.text.decode(), parts)

    def _identifier(self, node: Node) -> Value:
        name = node.text.decode().rsplit("::", 1)[-1]
        value = self.frame.scope.value(name)
        if value is not None:
            return value
        if name in self.program.constants:
            return Value.of(self.program.constants[name])
        ref = self.frame.scope.array(name)
        return Value(ref.array.key if ref is not None else name)

    def _literal(self, node: Node) -> Value:
        text = node.text.decode()
        number = integer_literal(text)
        return Value(text, number, width=literal_width(text)) if number is not None \
            else Value(text)

    def _binary(self, node: Node) -> Value:
        left = self.expr(node.child_by_field_name("left"))
        right = self.expr(node.child_by_field_name("right"))
        operator = node.child_by_field_name("operator").text.decode()
        width = max(left.width or 0, right.width or 0) or None
        decided = _short_circuit(operator, left, right)
        if decided is not None:  # `false && x`, `true || x`: x is never evaluated
            return Value.of(decided)
        if left.const is not None and right.const is not None and operator in BINARY:
            result = BINARY[operator](left.const, right.const)
            if result is not None:
                return replace(Value.of(result), width=width)
        value = replace(Value.derived(f"({left.text}{operator}{right.text})", [left, right],
                                      width), terms=linear_terms(operator, left, right))
        if self.iteration is not None:
            value = self._arithmetic(node, operator, left, right, value)
        return value

    def _arithmetic(self, node: Node, operator: str, left: Value, right: Value,
                    value: Value) -> Value:
        """Dividers and 64-bit multipliers in the iteration's datapath (operands that do not
        change in the loop are computed once, before it)."""
        iteration = self.iteration
        varies = left.variant or right.variant
        if operator in ("/", "%") and right.const is None and varies:
            iteration.divisions.setdefault(value.text, (value, self._quote(node)))
            return replace(value, divided=True)
        if operator == "*" and (value.width or 0) >= WIDE_BITS and varies:
            iteration.wide_multiplies.setdefault(value.text, (value, self._quote(node)))
        return value

    def _quote(self, node: Node) -> str:
        return f"`{' '.join(node.text.decode().split())}` ({self.where(node)})"

    def _unary(self, node: Node) -> Value:
        operand = self.expr(node.child_by_field_name("argument"))
        operator = node.child_by_field_name("operator").text.decode()
        if operand.const is not None and operator in UNARY:
            return Value(str(UNARY[operator](operand.const)), UNARY[operator](operand.const),
                         width=operand.width)
        return Value.derived(f"{operator}{operand.text}", [operand], operand.width)

    def _conditional(self, node: Node) -> Value:
        condition = self.expr(node.child_by_field_name("condition"))
        names = ["consequence", "alternative"]
        if condition.const is not None:
            return self.expr(node.child_by_field_name(names[0 if condition.const else 1]))
        parts = [condition] + [self.expr(node.child_by_field_name(n)) for n in names]
        widths = [p.width for p in parts[1:] if p.width]
        return Value.derived(f"({parts[0].text}?{parts[1].text}:{parts[2].text})", parts,
                             max(widths) if widths else None)

    def _parenthesized(self, node: Node) -> Value:
        values = [self.expr(child) for child in node.named_children]
        return values[-1] if values else Value("()")

    def _cast(self, node: Node) -> Value:
        value = self.expr(node.child_by_field_name("value"))
        type_text = node.child_by_field_name("type").text.decode()
        return replace(value, width=self.program.type_width(type_text) or value.width)

    def _field(self, node: Node) -> Value:
        base = self.expr(node.child_by_field_name("argument"))
        member = node.child_by_field_name("field").text.decode()
        return Value.derived(f"{base.text}.{member}", [base])

    def _assignment(self, node: Node) -> Value:
        left = node.child_by_field_name("left")
        right = self.expr(node.child_by_field_name("right"))
        compound = node.child_by_field_name("operator").text.decode() != "="
        self._store(left, read_too=compound)
        carried = left.type == "identifier" and self.frame.scope.value(left.text.decode())
        if self.iteration is not None and carried and carried.carried and right.divided:
            self.iteration.divider_recurrence = True
        return right

    def _update(self, node: Node) -> Value:
        target = node.child_by_field_name("argument")
        self._store(target, read_too=True)
        return self._opaque(target.text.decode(), None)

    def _store(self, target: Node, read_too: bool) -> None:
        if target.type == "subscript_expression":
            access = self._element(target)
            if access is not None and self.iteration is not None:
                if read_too:
                    self.iteration.record(Access(access.array, access.index, False,
                                                 access.where))
                self.iteration.record(Access(access.array, access.index, True, access.where))
            return
        if target.type == "identifier":
            name = target.text.decode()
            old = self.frame.scope.value(name)
            if old is not None and not old.carried:
                self._rebind(name, self._opaque(name, old.width))
            return
        self.expr(target)

    def _rebind(self, name: str, value: Value) -> None:
        scope: Scope | None = self.frame.scope
        while scope is not None and name not in scope.values:
            scope = scope.parent
        (scope or self.frame.scope).values[name] = value

    def _subscript(self, node: Node) -> Value:
        access = self._element(node)
        if access is None:
            return Value.derived(node.text.decode(), [])
        if self.iteration is not None:
            self.iteration.record(access)
        parts = list(access.index)
        return Value.derived(f"{access.array.key}[{','.join(v.text for v in parts)}]",
                             [Value("", variant=True)] if self.iteration else parts)

    def _element(self, node: Node) -> Access | None:
        """The array element a subscript chain names (indices after any bound prefix)."""
        indices: list[Node] = []
        base = node
        while base.type == "subscript_expression":
            argument_list = base.child_by_field_name("indices")
            indices[:0] = argument_list.named_children if argument_list is not None else []
            base = base.child_by_field_name("argument")
        values = [self.expr(index) for index in indices]
        ref = self._array_ref(base)
        if ref is None:
            self.expr(base)
            scalar = base.type == "identifier" and \
                self.frame.scope.value(base.text.decode()) is not None  # a bit select
            if self.iteration is not None and base.type == "identifier" and not scalar:
                self.unknown(node, f"`{base.text.decode()}` is no array the checker can trace")
            return None
        return Access(ref.array, ref.prefix + tuple(values), False, self.where(node))

    def _array_ref(self, node: Node) -> ArrayRef | None:
        if node.type in ("identifier", "qualified_identifier"):
            name = node.text.decode().rsplit("::", 1)[-1]
            return self.frame.scope.array(name) or self._global_array(name)
        if node.type == "parenthesized_expression" and node.named_children:
            return self._array_ref(node.named_children[0])
        return None

    def _global_array(self, name: str) -> ArrayRef | None:
        if name not in self.program.arrays:
            return None
        if name not in self.global_arrays:
            declared = self.program.arrays[name]
            pragmas = [p for functions in self.program.functions.values() for f in functions
                       for p in f.array_pragmas(name)]
            sizes = tuple(self.program.constant(size) for size in declared.dims)
            self.global_arrays[name] = ArrayRef(partitioned(f"::{name}", name, sizes, pragmas,
                                                            declared.const))
        return self.global_arrays[name]

    # -- calls ------------------------------------------------------------------------------

    def _call(self, node: Node) -> Value:
        callee = node.child_by_field_name("function")
        arguments = node.child_by_field_name("arguments").named_children
        if callee.type == "field_expression":  # a method: stream read, bit range, conversion
            base = self.expr(callee.child_by_field_name("argument"))
            parts = [base] + [self.expr(a) for a in arguments]
            method = callee.child_by_field_name("field").text.decode()
            width = WIDE_BITS if method.endswith("64") else None
            return Value.derived(f"{base.text}.{method}({','.join(p.text for p in parts)})",
                                 parts, width)
        name_node = callee.child_by_field_name("name") if callee.type == "template_function" \
            else callee
        name = name_node.text.decode() if name_node is not None else callee.text.decode()
        definitions = [f for f in self.program.definitions(name)
                       if len(f.params) == len(arguments)]
        if not definitions:  # a type conversion or a library function: an operator here
            parts = [self.expr(a) for a in arguments]
            texts = ",".join(p.text for p in parts)
            if len(parts) == 1 and self.program.type_width(name) is None and \
                    name.rsplit("::", 1)[-1] in ("int", "long"):
                return parts[0]
            return Value.derived(f"{name}({texts})", parts, self.program.type_width(name))
        templates = callee.child_by_field_name("arguments") \
            if callee.type == "template_function" else None
        results = [self._invoke(f, arguments, templates, node) for f in definitions]
        return results[0] if len(results) == 1 else Value.derived(name, results)

    def _invoke(self, function: Function, arguments: list[Node], templates: Node | None,
                node: Node) -> Value:
        """Bind the arguments, then inline the function or enter it as its own instance. An
        array argument chosen at run time (`c ? a : b`) is walked once with each array."""
        scope = Scope()
        parts: list[Value] = []
        choices: list[tuple[str, list[ArrayRef]]] = []
        for param, argument in zip(function.params, arguments, strict=True):
            if param.kind == "value":
                value = self.expr(argument)
                # a non-inlined function is one circuit: its arguments are run-time inputs
                scope.values[param.name] = Value(f"{param.name}@{next(self.counter)}",
                                                 width=value.width) \
                    if function.inline_off else value
                parts.append(value)
                continue
            refs = self._argument_arrays(argument)
            if not refs:
                self.unknown(argument, f"argument `{argument.text.decode()}` of "
                                       f"{function.name} is no array the checker can trace")
            choices.append((param.name, refs))
        for name, template in zip(function.template_params,
                                  templates.named_children if templates else [], strict=False):
            value = self.expr(template)
            if value.const is not None:
                scope.values[name] = value
        width = self.program.type_width(function.return_type)
        results = []
        for chosen in itertools.product(*[refs or [None] for _, refs in choices]):
            bound = Scope()
            bound.values = dict(scope.values)
            bound.arrays = {name: ref for (name, _), ref in zip(choices, chosen, strict=True)
                            if ref is not None}
            if function.inline_off:
                self._call_off(function, bound, node)
                results.append(Value.derived(f"{function.name}()",
                                             parts + [Value("", variant=True)], width))
            else:
                results.append(self._inline(function, bound, parts, width, node))
        return results[0] if len(results) == 1 else Value.derived(function.name, results, width)

    def _argument_arrays(self, argument: Node) -> list[ArrayRef]:
        if argument.type == "conditional_expression":
            condition = self.expr(argument.child_by_field_name("condition"))
            branches = ["consequence", "alternative"]
            if condition.const is not None:
                branches = [branches[0 if condition.const else 1]]
            return [ref for branch in branches
                    for ref in self._argument_arrays(argument.child_by_field_name(branch))]
        if argument.type != "subscript_expression":
            ref = self._array_ref(argument)
            return [ref] if ref is not None else []
        access = self._element(argument)
        return [ArrayRef(access.array, access.index)] if access is not None else []

    def _call_off(self, function: Function, scope: Scope, node: Node) -> None:
        self.calls.setdefault(self.context, set()).add(function.name)
        self.calls.setdefault(function.name, set())
        if self.iteration is not None:
            pipeline = _function_pipeline(function)
            ii = self.constant_text(pipeline.options.get("ii", "1")) if pipeline else None
            if ii is None or ii > self.iteration.target_ii:
                self.unknown(node, f"calls the non-inlined {function.name}, which is not "
                                   "pipelined at the loop's II: the loop waits for it")
                return
        binding = (function.name,) + tuple(
            (name, ref.array.key, tuple(v.text for v in ref.prefix))
            for name, ref in sorted(scope.arrays.items()))
        if binding in self.entered:
            return
        self.entered.add(binding)
        self._enter(function, scope)

    def _inline(self, function: Function, scope: Scope, parts: list[Value], width: int | None,
                node: Node) -> Value:
        if len(self.frames) > MAX_DEPTH or any(f.function is function for f in self.frames):
            self.unknown(node, f"{function.name} is recursive")
            return Value.derived(function.name, parts, width)
        frame = Frame(function, scope)
        self.frames.append(frame)
        try:
            self.statement(function.body)
        finally:
            self.frames.pop()
        results = frame.returns
        if results and all(r.const is not None and r.const == results[0].const for r in results):
            return Value(results[0].text, results[0].const, width=width)
        texts = ",".join(p.text for p in parts)
        return Value.derived(f"{function.name}({texts})", parts + results, width)


def _function_pipeline(function: Function) -> Pragma | None:
    """The function-level `pipeline` pragma of a function (not one of its loops')."""
    return next((p for p in body_pragmas(function.body) if p.kind == "pipeline"
                 and "off" not in p.flags), None)


def _short_circuit(operator: str, left: Value, right: Value) -> int | None:
    """The value of a logical operator one of whose sides decides it at compile time."""
    for side in (left, right):
        if side.const is not None:
            if operator == "&&" and not side.const:
                return 0
            if operator == "||" and side.const:
                return 1
    return None


def _step_of(update: Node | None, name: str | None) -> int | None:
    """The constant step of a loop counter's update (`++i`, `i += 2`, ...)."""
    if update is None or name is None:
        return None
    if update.type == "update_expression":
        if update.child_by_field_name("argument").text.decode() != name:
            return None
        return 1 if b"++" in update.text else -1
    if update.type == "assignment_expression" and \
            update.child_by_field_name("left").text.decode() == name:
        operator = update.child_by_field_name("operator").text.decode()
        amount = integer_literal(update.child_by_field_name("right").text.decode())
        if amount is not None and operator in ("+=", "-="):
            return amount if operator == "+=" else -amount
    return None


def _assigned_names(loop: Node) -> set[str]:
    """Plain variables a loop's body assigns (those declared outside it are loop-carried)."""
    names: set[str] = set()
    stack = [loop.child_by_field_name("body")]
    while stack:
        node = stack.pop()
        target = node.child_by_field_name("left") if node.type == "assignment_expression" \
            else node.child_by_field_name("argument") if node.type == "update_expression" \
            else None
        if target is not None and target.type == "identifier":
            names.add(target.text.decode())
        stack.extend(node.named_children)
    return names


EXPRESSIONS = {
    "identifier": Walker._identifier, "qualified_identifier": Walker._identifier,
    "type_identifier": Walker._identifier, "number_literal": Walker._literal,
    "true": lambda self, node: Value.of(1), "false": lambda self, node: Value.of(0),
    "binary_expression": Walker._binary, "unary_expression": Walker._unary,
    "conditional_expression": Walker._conditional,
    "parenthesized_expression": Walker._parenthesized, "cast_expression": Walker._cast,
    "field_expression": Walker._field, "assignment_expression": Walker._assignment,
    "update_expression": Walker._update, "subscript_expression": Walker._subscript,
    "call_expression": Walker._call,
    "condition_clause": Walker._parenthesized,
    "type_descriptor": lambda self, node: self.expr(node.named_children[0])
    if node.named_children else Value(node.text.decode()),
}
