"""What the CLI's progress says on stderr for imports and exports: the
total, the speed in binary units, and the commit phase after the last
byte; and that it never reaches stdout (issue 11, item 16)."""

import hashlib
import os
import re
import subprocess

from tests import service_helpers as sh
from tests.test_service import service  # noqa: F401

MiB = 1 << 20
ENV = {'PATH': '/usr/bin:/bin'}
SPEED = re.compile(r'\d+(\.\d+)? [KMGT]iB/s')


def _cli(service, *args, input_data=None):
    proc = subprocess.run(
        [f'{sh.VENV}/volsep', '--socket', service.socket, *args],
        input=input_data, capture_output=True, env=ENV, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr.decode(errors='replace')


def _lines(stderr):
    """What a terminal would have shown, one entry per bar refresh."""
    return [line for line in re.split(r'[\r\n]', stderr) if line.strip()]


def _final_bar(stderr, description):
    bars = [line for line in _lines(stderr)
            if line.startswith(f'{description}:') and '|' in line]
    assert bars, stderr
    return bars[-1]


def _seeded(service, tmp_path, size=16 * MiB):
    data = os.urandom(size // 2) + bytes(size // 2)
    service.json('volume', 'create', 'vm:root', '--pool', 'default',
                 '--size', str(size))
    image = tmp_path / 'seed.raw'
    image.write_bytes(data)
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', str(image))
    assert rc == 0, err
    return data, image


def test_import_progress_has_total_speed_and_commit_phase(service,
                                                          tmp_path):
    _, image = _seeded(service, tmp_path)
    rc, out, err = _cli(service, 'volume', 'import', 'vm:root', str(image),
                        '--progress', '-f', 'json')
    assert rc == 0, err
    final = _final_bar(err, 'import vm:root')
    assert '100%' in final and '16.0 MiB/16.0 MiB' in final, final
    assert SPEED.search(final), final
    assert re.search(r'^import vm:root: committing \.\.\. done in '
                     r'\d+\.\d s$', err, re.M), err
    # The commit is reported after the bar, not inside it.
    assert err.index('committing') > err.rindex('100%')
    assert b'"size": 16777216' in out


def test_import_from_a_pipe_shows_the_given_size(service, tmp_path):
    data, _ = _seeded(service, tmp_path)
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', '-', '--size',
                      '16M', '--progress', input_data=data)
    assert rc == 0, err
    assert '16.0 MiB/16.0 MiB' in _final_bar(err, 'import vm:root'), err
    assert 'committing ... done' in err


def test_refused_import_shows_no_commit(service, tmp_path):
    data, _ = _seeded(service, tmp_path)
    rc, _, err = _cli(service, 'volume', 'import', 'vm:root', '-', '--size',
                      '16M', '--progress', input_data=data + b'x')
    assert rc == 1
    assert 'committing' not in err
    assert err.rstrip().endswith('nothing was imported (give its exact '
                                 'size)'), err


def test_export_to_stdout_has_a_total_and_only_the_image_on_stdout(
        service, tmp_path):
    data, _ = _seeded(service, tmp_path)
    rc, out, err = _cli(service, 'volume', 'export', 'vm:root', '-',
                        '--progress')
    assert rc == 0, err
    assert hashlib.sha256(out).hexdigest() == \
        hashlib.sha256(data).hexdigest()
    final = _final_bar(err, 'export vm:root')
    assert '100%' in final and '16.0 MiB/16.0 MiB' in final, final
    assert SPEED.search(final), final


def test_export_to_file_shows_its_commit(service, tmp_path):
    data, _ = _seeded(service, tmp_path)
    target = tmp_path / 'out.raw'
    rc, _, err = _cli(service, 'volume', 'export', 'vm:root', str(target),
                      '--progress')
    assert rc == 0, err
    assert '16.0 MiB/16.0 MiB' in _final_bar(err, 'export vm:root'), err
    assert re.search(r'^export vm:root: committing \.\.\. done in '
                     r'\d+\.\d s$', err, re.M), err
    assert target.read_bytes() == data


def test_no_progress_unless_asked_or_a_terminal(service, tmp_path):
    data, image = _seeded(service, tmp_path)
    for args in ((), ('--no-progress',)):
        rc, _, err = _cli(service, 'volume', 'import', 'vm:root', str(image),
                          *args)
        assert rc == 0 and err == '', (args, err)
        rc, out, err = _cli(service, 'volume', 'export', 'vm:root', '-',
                            *args)
        assert rc == 0 and err == '' and out == data, (args, err)
