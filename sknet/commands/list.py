"""List the registered models with their aliases and descriptions; PATTERN filters the names
(and aliases) fnmatch-style, as timm's ``list_models(filter)`` does."""
import fnmatch
import json

HELP = "the registered models, with aliases and a one-line description"
EXAMPLES = """\
  sknet list                 # every model
  sknet list '*resnext*'     # fnmatch-style, as timm.list_models('*resnext*')
  sknet list sknet50 --json  # aliases match too"""


def add_arguments(p):
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on names and aliases (default: *)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {name, aliases, description}")


def models(pattern="*"):
    """[{name, aliases, description}] of every model whose name or an alias matches ``pattern``."""
    from ..registry import get_spec, list_models

    found = []
    for name in list_models():
        spec = get_spec(name)
        if any(fnmatch.fnmatchcase(n, pattern) for n in (name, *spec.aliases)):
            found.append({"name": name, "aliases": list(spec.aliases),
                          "description": " ".join(spec.description.split())})
    return found


def run(args):
    found = models(args.pattern)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    width = max((len(m["name"]) for m in found), default=0)
    for m in found:
        aliases = f" ({', '.join(m['aliases'])})" if m["aliases"] else ""
        print(f"{m['name']:<{width}}  {m['description']}{aliases}")
    return 0
