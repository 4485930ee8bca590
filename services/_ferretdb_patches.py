"""Source patches for FerretDB 1.24.2, applied to the module source before ``go build``.

1.24.2's SQLite backend pushes ``{_id: x}`` down as ``_ferretdb_sjson->'$._id' = ?`` while its
own ``_id_`` index is built on ``_ferretdb_sjson->"_id"``; SQLite matches index expressions
textually, so every point read by ``_id`` scanned the whole table (47 ms at 20k users, O(n)).
Spelling the pushdown like the index (``->'_id'``, the same JSON path) makes it an index search
(0.04 ms); ``{_id: {$in: [...]}}`` is pushed down too, and so is the ``_id`` condition of a
filter with other keys beside it (it pushed down only a filter of ``_id`` alone: the events'
claims, ``{_id: {$in: ids}, claim_owner: token}``, scanned the table, 2.9 s an update of 50
at 20k events, 56 ms on ``_id`` alone and 55 ms patched, ``bench/claims_store.py``; under
clients' retries claims expired in the queue of such updates, bench/chaos.py seed 46). Every
other filter was evaluated by decoding each row in Go: ~0.2–0.3 ms per document for a
``{updated_at: {$gte: t}}`` that matches nothing (a reindex's catch-up, every polling sync
pass). The range patch pushes comparisons of top-level dates and ints (and ``$or`` of them)
down as a superset pre-filter evaluated by SQLite on the stored JSON (0.014 ms per row; its
comment states why no matching document is dropped).

1.24.2's ``update`` command closed each statement's result rows only when the whole command
ended (``defer`` inside its loop): a command of K statements held K of the database's 100
SQLite connections, and a few concurrent commands (event batches of several API processes,
or what a paused store let pile up) each holding some and waiting for more wedged the
database for good (measured: 4 concurrent ``bulk_write`` s of 50 updates, every command then
timed out and ``ferretdb_sqldb_in_use`` stayed 100 until a restart). Each statement's rows
are now closed as soon as it is applied.
"""

from __future__ import annotations

from pathlib import Path

from opendisco._exceptions import ServiceError

__all__ = ["PATCHES", "PATCH_LEVEL", "apply_patches"]

_COLLECTION = "internal/backends/sqlite/collection.go"
_ID_IN_HELPER = """// prepareIDInClause pushes {_id: {$in: [string|ObjectID, ...]}} down as an
// _id index search (opendisco patch; the handler still applies the whole filter).
func prepareIDInClause(cond *types.Document) (string, []any) {
	if cond.Len() != 1 {
		return "", nil
	}
	in, err := cond.Get("$in")
	if err != nil {
		return "", nil
	}
	arr, ok := in.(*types.Array)
	if !ok || arr.Len() == 0 || arr.Len() > 1000 {
		return "", nil
	}
	placeholders := make([]string, arr.Len())
	args := make([]any, arr.Len())
	for i := 0; i < arr.Len(); i++ {
		v := must.NotFail(arr.Get(i))
		switch v.(type) {
		case string, types.ObjectID:
		default:
			return "", nil
		}
		placeholders[i] = "?"
		args[i] = string(must.NotFail(sjson.MarshalSingleValue(v)))
	}
	list := strings.Join(placeholders, ", ")
	return fmt.Sprintf(` WHERE %s IN (%s)`, metadata.IDColumn, list), args
}

"""
_ID_FILTER_HELPER = """// filterID returns the _id condition of a filter with one _id key, among any
// others (opendisco patch: top-level keys are ANDed, so the _id pushdown is a superset
// pre-filter whatever else the filter says; the handler still applies the whole filter).
func filterID(filter *types.Document) (any, bool) {
	n := 0
	for _, k := range filter.Keys() {
		if k == "_id" {
			n++
		}
	}
	if n != 1 {
		return nil, false
	}
	v, _ := filter.Get("_id")
	return v, true
}

"""
_ID_ONLY = '\tif params.Filter.Len() == 1 {\n\t\tv, _ := params.Filter.Get("_id")\n'
_EQ_CASE_END = "\t\t\targs = []any{string(must.NotFail(sjson.MarshalSingleValue(v)))}\n\t\t}\n"
_EXPLAIN_ORDER = "\n\torderByClause := prepareOrderByClause(params.Sort)\n"
_EXPLAIN_DOC = "// Explain implements backends.Collection interface.\n"
_QUERY_WHERE = "\n\tq += whereClause\n"
_RANGE_FALLBACK = (
    '\tif whereClause == "" {\n\t\twhereClause, args = prepareRangeClause(params.Filter)\n\t}\n\n'
)
_RANGE_HELPER = """\
// prepareRangeClause pushes simple comparisons on top-level fields down to SQLite as a
// superset pre-filter (opendisco patch; the handler still applies the whole filter to every
// row it returns, as for the _id pushdown). Understood, for a plain top-level field f:
// {f: {$gt|$gte|$lt|$lte: <date|int|long>, ...}} and {f: {$not: {$type: "date"}}}, and
// {$or: [...]} whose every branch yields a condition. Top-level keys are ANDed, so a key
// skipped keeps a superset; a field whose operators are not all understood is skipped whole
// (the handler's operator loop returns early for some, e.g. $ne of a document, so it does
// not AND them).
//
// Why no document the filter matches is ever dropped: a row is dropped only when the SJSON
// schema ("$s".p.f.t) says f holds one date (or one int/long) and that value fails the
// comparison (or, for $not $type date, is a date). Such a document fails the filter in
// MongoDB and in the handler alike: a scalar is compared only within its type bracket,
// dates with dates as Unix milliseconds (SJSON stores a date as exactly that integer, and
// the handler compares UnixMilli), numbers with numbers; and a date is of $type "date".
// A missing field (no schema entry: the IFNULL), null, an array (which matches when any
// element does), a document, a string, a double, a timestamp or any other type is kept
// whatever the operand, so type bracketing, arrays and null/missing stay the handler's.
// Doubles are left out: SQLite's text-to-double conversion is not promised to round like
// Go's, so a stored double equal to the operand could compare unequal; int/long literals
// convert exactly.
// As everywhere in FerretDB (which checks operators per document), a filter the handler
// would reject may then return no rows instead of an error when no row is left to check.
func prepareRangeClause(filter *types.Document) (string, []any) {
	cond, args := pushdownAnd(filter)
	if cond == "" {
		return "", nil
	}

	return " WHERE " + cond, args
}

// pushdownAnd is the conjunction of the conditions of filter's understood keys ("" if none).
func pushdownAnd(filter *types.Document) (string, []any) {
	if filter == nil {
		return "", nil
	}

	var conds []string
	var args []any
	values := filter.Values()

	for i, key := range filter.Keys() {
		var cond string
		var a []any

		if key == "$or" {
			cond, a = pushdownOr(values[i])
		} else if ops, ok := values[i].(*types.Document); ok && pushdownPlainField(key) {
			cond, a = pushdownField(key, ops)
		}

		if cond != "" {
			conds = append(conds, cond)
			args = append(args, a...)
		}
	}

	return strings.Join(conds, " AND "), args
}

// pushdownOr is the disjunction of its branches' conditions; "" if any branch has none.
func pushdownOr(v any) (string, []any) {
	branches, ok := v.(*types.Array)
	if !ok || branches.Len() == 0 {
		return "", nil
	}

	conds := make([]string, branches.Len())
	var args []any

	for i := 0; i < branches.Len(); i++ {
		branch, ok := must.NotFail(branches.Get(i)).(*types.Document)
		if !ok {
			return "", nil
		}

		cond, a := pushdownAnd(branch)
		if cond == "" {
			return "", nil
		}

		conds[i] = "(" + cond + ")"
		args = append(args, a...)
	}

	return "(" + strings.Join(conds, " OR ") + ")", args
}

// pushdownField is the condition for {field: {op: v, ...}}; "" unless every op is understood.
func pushdownField(field string, ops *types.Document) (string, []any) {
	typ := fmt.Sprintf(`IFNULL(%s->>'$."$s".p.%s.t', '')`, metadata.DefaultColumn, field)
	conds := make([]string, 0, ops.Len())
	var args []any
	values := ops.Values()

	for i, op := range ops.Keys() {
		if op == "$not" {
			not, ok := values[i].(*types.Document)
			if !ok || not.Len() != 1 {
				return "", nil
			}

			switch t, _ := not.Get("$type"); t {
			case "date", int32(9):
				conds = append(conds, typ+` != 'date'`)
				continue
			}

			return "", nil
		}

		sqlOp, ok := map[string]string{"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}[op]
		if !ok {
			return "", nil
		}

		var bracket string
		switch v := values[i].(type) {
		case time.Time:
			bracket, args = `('date')`, append(args, v.UnixMilli())
		case int32:
			bracket, args = `('int', 'long')`, append(args, int64(v))
		case int64:
			bracket, args = `('int', 'long')`, append(args, v)
		default:
			return "", nil
		}

		conds = append(conds, fmt.Sprintf(
			`(%s NOT IN %s OR %s->>'%s' %s ?)`, typ, bracket, metadata.DefaultColumn, field, sqlOp,
		))
	}

	return strings.Join(conds, " AND "), args
}

// pushdownPlainField reports whether key is a top-level field name safe to splice into a
// JSON path: [A-Za-z_][A-Za-z0-9_]* (no dots, no $, no quotes).
func pushdownPlainField(key string) bool {
	for i, c := range key {
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}

	return key != ""
}

"""
_UPDATE = "internal/handler/msg_update.go"
#: (file, exact original text, replacement, occurrences) applied in order to the module source
PATCHES = (
    # the _id pushdown spelled like the _id_ index expression, so SQLite uses the index
    (
        "internal/backends/sqlite/metadata/metadata.go",
        "IDColumn = DefaultColumn + \"->'$._id'\"",
        "IDColumn = DefaultColumn + \"->'_id'\"",
        1,
    ),
    # {_id: {$in: [...]}} pushed down as well, in Query (find, update, delete) and Explain
    (
        _COLLECTION,
        _EQ_CASE_END,
        _EQ_CASE_END[: -len("\t\t}\n")]
        + "\t\tcase *types.Document:\n"
        + "\t\t\twhereClause, args = prepareIDInClause(v.(*types.Document))\n\t\t}\n",
        2,
    ),
    # the _id condition pushed down beside other keys too (`{_id: {$in: ids}, owner: t}`:
    # the event claims' conditional updates scanned the whole table, 2.9 s at 20k events)
    (_COLLECTION, _ID_ONLY, "\tif v, ok := filterID(params.Filter); ok {\n", 2),
    # any other filter: comparisons of top-level dates and ints as a superset pre-filter
    (_COLLECTION, _QUERY_WHERE, "\n" + _RANGE_FALLBACK + _QUERY_WHERE[1:], 1),
    (
        _COLLECTION,
        _EXPLAIN_ORDER,
        "\n" + _RANGE_FALLBACK + '\tfilterPushdown = whereClause != ""\n' + _EXPLAIN_ORDER,
        1,
    ),
    (
        _COLLECTION,
        _EXPLAIN_DOC,
        _ID_FILTER_HELPER + _ID_IN_HELPER + _RANGE_HELPER + _EXPLAIN_DOC,
        1,
    ),
    (_COLLECTION, '\t"strings"\n\n', '\t"strings"\n\t"time"\n\n', 1),
    # an update statement's rows closed when it is applied, not when the command ends
    (
        _UPDATE,
        "\t\tcloser := iterator.NewMultiCloser()\n\t\tdefer closer.Close()\n",
        "\t\tcloser := iterator.NewMultiCloser()\n",
        1,
    ),
    (
        _UPDATE,
        '\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n',
        '\t\tresult, err := common.UpdateDocument(ctx, c, "update", iter, &u)\n'
        "\t\tcloser.Close() // opendisco patch: release the statement's connection now\n",
        1,
    ),
)
#: bump with any change to PATCHES (part of the build directory name)
PATCH_LEVEL = 5


def apply_patches(src: Path) -> None:
    """Apply :data:`PATCHES` to a FerretDB source tree; fail loudly if one no longer fits."""
    for rel, original, replacement, occurrences in PATCHES:
        path = src / rel
        text = path.read_text()
        if text.count(original) != occurrences:
            raise ServiceError(f"FerretDB source patch does not apply to {rel}: {original!r}")
        path.write_text(text.replace(original, replacement))
