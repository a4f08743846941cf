"""Keystone's side of JWS tokens, done as Keystone does it (PyJWT + cryptography).

  python pyjwt_keystone.py keypair DIR        -> DIR/private.pem, DIR/public.pem
      as keystone-manage create_jws_keypair (keystone/common/jwt_utils.py)
  python pyjwt_keystone.py sign DIR CLAIMS    -> prints a token signed with DIR/private.pem
      as keystone/token/providers/jws/core.py (jwt.encode, ES256)
  python pyjwt_keystone.py verify PUBDIR TOKEN -> prints the claims verified with any
      public key in PUBDIR (verify_exp=False, as Keystone), or exits 1
"""
import glob
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def keypair(directory):
    private_key = ec.generate_private_key(ec.SECP256R1())
    with open(os.path.join(directory, "private.pem"), "wb") as f:
        f.write(private_key.private_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PrivateFormat.PKCS8,
            encryption_algorithm=serialization.NoEncryption()))
    with open(os.path.join(directory, "public.pem"), "wb") as f:
        f.write(private_key.public_key().public_bytes(
            encoding=serialization.Encoding.PEM,
            format=serialization.PublicFormat.SubjectPublicKeyInfo))


def sign(directory, claims):
    with open(os.path.join(directory, "private.pem")) as f:
        key = f.read()
    print(jwt.encode(json.loads(claims), key, algorithm="ES256"))


def verify(directory, token):
    for path in sorted(glob.glob(os.path.join(directory, "*"))):
        with open(path) as f:
            key = f.read()
        try:
            claims = jwt.decode(token, key, algorithms=["ES256"],
                                options={"verify_exp": False})
        except jwt.exceptions.InvalidTokenError:
            continue
        print(json.dumps(claims))
        return
    sys.exit(1)


if __name__ == "__main__":
    command = sys.argv[1]
    {"keypair": keypair, "sign": sign, "verify": verify}[command](*sys.argv[2:])
