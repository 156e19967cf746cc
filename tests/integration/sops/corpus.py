"""Plaintext inputs for the interoperability tests: every store, with the awkward cases sops users hit."""

from __future__ import annotations

YAML_SECRET = """\
# A Kubernetes Secret, kubesec style
apiVersion: v1
kind: Secret   # only data and stringData get encrypted
metadata:
  name: db-credentials
  namespace: prod
  labels: {app: db}
type: Opaque
data:
  password: aHVudGVyMg==
  # the replica user
  replica: c2VjcmV0
stringData:
  url: "postgres://app@db:5432/app"
"""

YAML_RICH = """\
# head comment

# second head comment
plain: value
quoted: "yes"
number: 42
float: 2.5
big: 1e20
bool: true
nul: null
empty: ""
date: 2024-01-01
stamp: 2024-01-01T10:20:30.5+02:00
octal: 0o17
multi: |
  line one
  line two
keep: |+
  trailing

strip: |-
  no newline
tricky: 'a: b # not a comment'
unicode: "héllo ✓"
tab: "a\\tb"
nested:   # about nested
  # head of x
  x: 1
  deeper:
    y: [1, two, 3.5]
    z: end
  # foot of nested, indented
# foot at column 0
list:
  - a # line comment
  # between items
  - b: 1
    c: 2
  - - inner
  # after the items
anchor: &anc
  k: v
alias: *anc
# last comment
"""

YAML_MULTIDOC = """\
apiVersion: v1
kind: Secret
metadata:
  name: one
stringData:
  a: first
---
# a comment-only document
---
apiVersion: v1
kind: Secret
metadata:
  name: two
stringData:
  b: second
"""

JSON_DOC = (
    '{"a": 1, "b": [1, 2.5, true, null, "x", {"c": "d"}], "e": {}, "f": [], "g": 1e20, "h": 1.0,'
    ' "i": "\\u00e9<>&\\u2028", "j": 12345678901234567890, "k": -0.0, "l": 1.5e-7,'
    ' "nested": {"deep": {"k": "v"}}}\n'
)

DOTENV = 'A=1\n# comment\nB="quoted value"\nC=multi\\nline\nexport D=x\nE=\nSPACED = v \n'

INI = "top = 1\n# hash comment\n[sec]\na = 1\nlongerkey=2\n; c2\n  spaced  =  v v  \n[empty]\n"

# '#' inside scalars is not a comment, and a real comment may follow it on the same line
YAML_HASHES = """\
a: "x #y" # after a quoted hash
b: 'p # q' # two
c: |
  # not a comment
  text # neither
d: plain#not
e: [1, "#", 2] # after a flow list
# foot
"""

CASES = {
    "secret.yaml": ("yaml", YAML_SECRET),
    "rich.yaml": ("yaml", YAML_RICH),
    "multi.yaml": ("yaml", YAML_MULTIDOC),
    "hashes.yaml": ("yaml", YAML_HASHES),
    "doc.json": ("json", JSON_DOC),
    "app.env": ("dotenv", DOTENV),
    "conf.ini": ("ini", INI),
}
