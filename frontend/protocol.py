"""volsepd's wire protocol: JSON lines over a unix stream socket.

A request is one line {"id": ..., "method": "admin....", "params": {...}};
the reply is one line {"id": ..., "result": ...} or {"id": ...,
"error": {"class": ..., "message": ...}}. Import and export carry raw bytes
on the same connection between JSON lines (see api.py).
"""

import json

MAX_LINE = 1 << 20
END_OF_STREAM = {'end': True}


class ProtocolError(Exception):
    error_class = 'InvalidArgument'


def encode(message):
    return (json.dumps(message, separators=(',', ':')) + '\n').encode()


# The exact bytes that must follow an import's data.
END_MARKER = encode(END_OF_STREAM)


def decode_request(line):
    try:
        request = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError('request is not JSON') from None
    if not isinstance(request, dict):
        raise ProtocolError('request must be a JSON object')
    method = request.get('method')
    params = request.get('params', {})
    if type(method) is not str or len(method) > 128:
        raise ProtocolError('method must be a string')
    if not isinstance(params, dict):
        raise ProtocolError('params must be an object')
    return request.get('id'), method, params


def error_reply(request_id, error_class, message):
    return {'id': request_id,
            'error': {'class': error_class, 'message': str(message)[:4096]}}
