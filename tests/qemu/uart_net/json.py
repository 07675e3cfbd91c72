# Stand-in: the json the device uses (README.md): dumps for its event
# lines, dump/load for the transfer state file (.xstate) on the RAM file
# system. Objects, lists, ints, strings (\" \\ \/ \n \t and \u escapes
# of four hex digits),
# true/false/null; anything else is a ValueError, as json.load raises.


def dumps(v):
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, dict):
        return "{" + ", ".join(dumps(k) + ": " + dumps(x) for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(dumps(x) for x in v) + "]"
    return dumps(str(v))


def dump(v, f):
    f.write(dumps(v))


_ESC = {'"': '"', "\\": "\\", "/": "/", "n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f"}


def _ws(s, i):
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def _val(s, i):
    # One value at s[i:] (no leading blanks): (value, index after it).
    if i >= len(s):
        raise ValueError("json: truncated")
    c = s[i]
    if c == "{":
        d = {}
        i = _ws(s, i + 1)
        if s[i:i + 1] == "}":
            return d, i + 1
        while True:
            k, i = _val(s, _ws(s, i))
            if not isinstance(k, str):
                raise ValueError("json: key")
            i = _ws(s, i)
            if s[i:i + 1] != ":":
                raise ValueError("json: ':'")
            d[k], i = _val(s, _ws(s, i + 1))
            i = _ws(s, i)
            if s[i:i + 1] == "}":
                return d, i + 1
            if s[i:i + 1] != ",":
                raise ValueError("json: ','")
            i += 1
    if c == "[":
        a = []
        i = _ws(s, i + 1)
        if s[i:i + 1] == "]":
            return a, i + 1
        while True:
            v, i = _val(s, _ws(s, i))
            a.append(v)
            i = _ws(s, i)
            if s[i:i + 1] == "]":
                return a, i + 1
            if s[i:i + 1] != ",":
                raise ValueError("json: ','")
            i += 1
    if c == '"':
        out = []
        i += 1
        while True:
            if i >= len(s):
                raise ValueError("json: string")
            c = s[i]
            if c == '"':
                return "".join(out), i + 1
            if c == "\\":
                e = s[i + 1:i + 2]
                if e == "u":
                    out.append(chr(int(s[i + 2:i + 6], 16)))
                    i += 6
                    continue
                if e not in _ESC:
                    raise ValueError("json: escape")
                out.append(_ESC[e])
                i += 2
                continue
            out.append(c)
            i += 1
    for word, v in (("true", True), ("false", False), ("null", None)):
        if s[i:i + len(word)] == word:
            return v, i + len(word)
    j = i + 1 if c == "-" else i
    while j < len(s) and "0" <= s[j] <= "9":
        j += 1
    if j == i or s[i:j] == "-":
        raise ValueError("json: value")
    return int(s[i:j]), j


def loads(s):
    v, i = _val(s, _ws(s, 0))
    if _ws(s, i) != len(s):
        raise ValueError("json: extra data")
    return v


def load(f):
    return loads(f.read())
