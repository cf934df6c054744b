"""Certificates for the TLS tests, made with the openssl CLI in a directory.

make(d) writes (EC P-256 keys unless noted; every key unencrypted unless
noted; each NAME.crt has its NAME.key):

  ca.crt            test CA "mqttpx TLS test CA"
  server.crt        CN localhost, SAN DNS:localhost + IP:127.0.0.1, by ca
  server-rsa.crt    the same names, RSA 2048, by ca
  client1.crt       /C=GB/O=Example Org/OU=Sensors/CN=client1, by ca
  client2.crt       /C=DE/O=Other Org/CN=client2, by ca
  revoked.crt       /O=Example Org/CN=revoked, by ca, revoked in crl.pem
  crl.pem           ca's CRL (openssl ca -gencrl), listing revoked.crt
  ca2.crt           a second CA "other CA"
  intruder.crt      /O=Example Org/CN=intruder, by ca2
  server-pkcs8-enc.key, server-trad-enc.key
                    server.key encrypted (password "secret"): PKCS#8 and
                    the traditional "Proc-Type: 4,ENCRYPTED" PEM
  capath/ca.pem     ca.crt alone in a folder (capath)
  odd-*.crt         clients by ca whose subjects need RFC 2253's escapes
                    (ODD: name -> subject), see subject_rfc2253()

CLIENT1_DN is client1's subject as Mosquitto's use_subject_as_username
spells it (RFC 2253: most specific RDN first, commas, no spaces).
"""

import os
import shutil
import subprocess

OPENSSL = shutil.which("openssl")

CLIENT1_DN = "CN=client1,OU=Sensors,O=Example Org,C=GB"

# subjects (as `openssl req -subj` takes them) that RFC 2253 escapes: , " +
# a leading # or space, a trailing space, UTF-8 (as \XX), other attribute
# types, a multi-valued RDN
ODD = {
    "odd-escapes": '/C=US/O=Acme, Inc./CN=sensor "3"',
    "odd-utf8": "/C=DE/O=M\u00fcller GmbH/CN=caf\u00e9",
    "odd-attrs": "/DC=org/DC=example/UID=jdoe/emailAddress=j@example.org"
                 "/CN=J Doe",
    "odd-multi": "/O=Example/CN=multi+UID=u1/OU=a\\+b",
    "odd-spaces": "/O=#hash/CN= lead and trail ",
}

PASSWORD = "secret"

EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
RSA = ["-newkey", "rsa:2048"]

SERVER_EXT = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,IP:127.0.0.1
"""
CLIENT_EXT = """basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=clientAuth
"""
# just enough of a CA for `openssl ca -revoke` and `-gencrl`
CA_CNF = """[ca]
default_ca = ca_default
[ca_default]
dir = {d}
database = {d}/index.txt
certificate = {d}/ca.crt
private_key = {d}/ca.key
crlnumber = {d}/crlnumber
default_md = sha256
default_crl_days = 2
"""


def ossl(d, *args):
    r = subprocess.run([OPENSSL] + list(args), cwd=d, timeout=60,
                       capture_output=True, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, "openssl %s: %s" % (
        " ".join(args), r.stderr.decode("utf-8", "replace"))


def _write(d, name, text):
    with open(os.path.join(d, name), "w") as f:
        f.write(text)


def _ca(d, name, cn):
    ossl(d, "req", "-x509", *EC, "-nodes", "-keyout", name + ".key",
         "-out", name + ".crt", "-days", "2", "-subj", "/O=mqttpx tests/CN=" +
         cn, "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _leaf(d, name, subj, ca, ext, key=EC, req=()):
    ossl(d, "req", *key, "-nodes", "-keyout", name + ".key",
         "-out", name + ".csr", "-subj", subj, *req)
    ossl(d, "x509", "-req", "-in", name + ".csr", "-CA", ca + ".crt",
         "-CAkey", ca + ".key", "-CAcreateserial", "-days", "2",
         "-out", name + ".crt", "-extfile", ext)


def make(d):
    """Write every file listed in the module docstring into d."""
    _write(d, "server.ext", SERVER_EXT)
    _write(d, "client.ext", CLIENT_EXT)
    _ca(d, "ca", "mqttpx TLS test CA")
    _ca(d, "ca2", "other CA")
    _leaf(d, "server", "/CN=localhost", "ca", "server.ext")
    _leaf(d, "server-rsa", "/CN=localhost", "ca", "server.ext", key=RSA)
    _leaf(d, "client1", "/C=GB/O=Example Org/OU=Sensors/CN=client1", "ca",
          "client.ext")
    _leaf(d, "client2", "/C=DE/O=Other Org/CN=client2", "ca", "client.ext")
    _leaf(d, "revoked", "/O=Example Org/CN=revoked", "ca", "client.ext")
    _leaf(d, "intruder", "/O=Example Org/CN=intruder", "ca2", "client.ext")
    for name, subj in ODD.items():
        _leaf(d, name, subj, "ca", "client.ext",
              req=("-utf8", "-multivalue-rdn"))
    # the CRL: a throwaway CA database in which revoked.crt is revoked
    _write(d, "index.txt", "")
    _write(d, "crlnumber", "01\n")
    _write(d, "ca.cnf", CA_CNF.format(d=d))
    ossl(d, "ca", "-config", "ca.cnf", "-revoke", "revoked.crt")
    ossl(d, "ca", "-config", "ca.cnf", "-gencrl", "-out", "crl.pem")
    ossl(d, "pkcs8", "-topk8", "-in", "server.key", "-out",
         "server-pkcs8-enc.key", "-v2", "aes-256-cbc", "-passout",
         "pass:" + PASSWORD)
    ossl(d, "ec", "-in", "server.key", "-out", "server-trad-enc.key",
         "-aes256", "-passout", "pass:" + PASSWORD)
    os.mkdir(os.path.join(d, "capath"))
    shutil.copy(os.path.join(d, "ca.crt"), os.path.join(d, "capath",
                                                        "ca.pem"))
    return d


def subject_rfc2253(d, name):
    """NAME.crt's subject as OpenSSL prints it with XN_FLAG_RFC2253, as
    Mosquitto's use_subject_as_username takes it."""
    r = subprocess.run([OPENSSL, "x509", "-in", os.path.join(d, name + ".crt"),
                        "-noout", "-subject", "-nameopt", "RFC2253"],
                       capture_output=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode("utf-8").rstrip("\n")
    assert out.startswith("subject="), out
    return out[len("subject="):]


def der(d, name):
    """NAME.crt as DER bytes (to compare with a peer's certificate)."""
    r = subprocess.run([OPENSSL, "x509", "-in", os.path.join(d, name + ".crt"),
                        "-outform", "DER"], capture_output=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr.decode()
    return r.stdout
