"""README's five-minute tour, run as written against a real system-mode
service: every line succeeds (except the one the tour says fails), and the
closing `volsep audit verify` finds the audit log intact."""

import os
import re

from tests import rig
from tests import service_helpers
from tests.service_helpers import VENV

README = os.path.join(os.environ['VOLSEP_TEST_ETC'], 'README.md')
DEMO_DIR = '/var/tmp/volsep-demo'


def tour_lines():
    with open(README) as f:
        text = f.read()
    section = text.split('## A five-minute tour', 1)[1]
    block = re.search(r'```sh\n(.*?)```', section, re.S).group(1)
    return [line for line in block.splitlines()
            if line.strip() and not line.lstrip().startswith('#')]


def test_the_tour_runs_as_written_and_ends_with_a_clean_audit(tmp_path):
    state_dir = service_helpers.fresh_state_dir()
    service = service_helpers.Service(state_dir).start()
    try:
        lines = tour_lines()
        assert lines[-1].startswith('volsep audit verify')
        script = ['exec 3>"$RESULTS"']
        for number, line in enumerate(lines):
            line = line.replace(DEMO_DIR, state_dir).replace(
                '/opt/volsep/venv/bin', VENV)
            script += [line, f'echo "{number} $?" >&3']
        results = f'{state_dir}.tour-results'
        rc, out, err = rig.run(
            ['/bin/bash', '-c', '\n'.join(script)],
            env={'PATH': '/usr/bin:/bin', 'RESULTS': results,
                 'HOME': str(tmp_path), 'TMPDIR': str(tmp_path)})
        output = out.decode(errors='replace') + err.decode(errors='replace')
        codes = dict(line.split() for line in
                     rig.read(results).decode().splitlines())
        rig.run(['rm', '-f', results])
        for number, line in enumerate(lines):
            expected_to_fail = '# fails' in line
            code = codes.get(str(number))
            assert code is not None, (line, output)
            assert (code != '0') == expected_to_fail, (line, code, output)
        assert 'problem' in output and 'AuditChainBroken' not in output
    finally:
        service.stop()
        rig.rmtree(state_dir)
