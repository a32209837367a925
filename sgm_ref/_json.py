"""Reading the JSON of files sgm_ref did not necessarily write: every failure a ValueError.

json.loads raises JSONDecodeError on malformed text, UnicodeDecodeError on bytes that are
not UTF-8, and RecursionError on deep nesting ("[" * 100000): the last is not a ValueError,
so it used to escape as a traceback. And text nested just under Python's recursion limit
parses, then overflows the stack later in whatever walks it (copying, validating,
writing it back). load_json turns all of these into one ValueError naming the file, and
refuses nesting deeper than MAX_DEPTH levels, far beyond any file sgm_ref writes (a run's
config.json is 5 deep: config / target_definition / covariances / row / entry).
"""

import json

__all__ = ["load_json", "MAX_DEPTH"]

MAX_DEPTH = 64


def load_json(source, what):
    """Parse JSON from text, bytes or an open file; raise ValueError naming `what` on any failure.

    Parameters
    ----------
    source : str, bytes or a file object (text or binary)
    what : str
        Names the source in messages, e.g. "run/config.json" or "target file m.json".

    Returns
    -------
    The parsed object (dict, list, str, int, float, bool or None). As json reads them,
    the literals NaN, Infinity and -Infinity (not JSON, but Python writes them) give nan
    and +-inf, and a number beyond float64's range (1e400) gives +-inf: the callers
    check the numbers they use (sgm_ref writes none of these).

    Raises
    ------
    ValueError
        Malformed JSON, bytes that are not UTF-8 (UTF-16 and UTF-32 included), a key
        twice in one object, an integer of more digits than Python converts, or nesting
        deeper than MAX_DEPTH. OSError from reading a file object is passed on unchanged.
    """
    try:
        text = source.read() if hasattr(source, "read") else source
        if isinstance(text, (bytes, bytearray)):
            # strictly (a leading byte-order mark aside, as json.loads has it): json.loads would take
            # UTF-16 and UTF-32 too, and bytes that are no UTF-8 (b"\xed\xa0\x80", a lone surrogate,
            # which no UTF-8 writer can write back)
            text = bytes(text).decode("utf-8-sig")
        value = json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise ValueError(f"{what} has the key {exc.args[0]!r} twice in one object; which one is meant is not "
                         "clear: keep one") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON ({exc})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON (not UTF-8 text: {exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply to read (over Python's recursion limit); "
                         "it is not a file sgm_ref wrote") from None
    except TypeError as exc:  # neither text nor bytes (e.g. a numpy array's str was not taken)
        raise ValueError(f"{what} is not JSON text ({exc})") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (4300)
        raise ValueError(f"{what} is not readable JSON ({exc})") from None
    if _depth_exceeds(value, MAX_DEPTH):
        raise ValueError(f"{what} is nested more than {MAX_DEPTH} levels deep; it is not a file sgm_ref wrote")
    return value


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs):
    """json's object hook: a dict, refusing a key given twice (json.loads would keep the last)."""
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _depth_exceeds(value, limit):
    """Whether value nests containers more than limit deep (iteratively: no recursion to overflow)."""
    level = [value]
    for _ in range(limit):  # after k rounds, level holds what sits inside k containers
        level = [child for v in level if isinstance(v, (dict, list))
                 for child in (v.values() if isinstance(v, dict) else v)]
        if not level:
            return False
    return any(isinstance(v, (dict, list)) for v in level)
