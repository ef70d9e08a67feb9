# Fixed keys of the VM tests and of the module evaluation, made once with `bento keygen`
# and `ssh-keygen`. Test-only and public: they protect nothing. The private halves reach
# the test VMs through environment.etc (so the Nix store), which real fleets must never do.
let
  line = file: builtins.head (builtins.match "([^\n]*)\n?" (builtins.readFile file));
  # "ssh-ed25519 AAAA... comment" -> "ssh-ed25519 AAAA..."
  openssh = file: builtins.concatStringsSep " " (builtins.genList (builtins.elemAt (builtins.filter builtins.isString (builtins.split " " (line file)))) 2);
in
{
  fleet = {
    secret = ./bento-test-fleet.secret;
    public = line ./bento-test-fleet.public;
  };
  server = {
    secret = ./server_host_key;
    public = openssh ./server_host_key.pub;
  };
  web1 = {
    secret = ./web1;
    public = openssh ./web1.pub;
  };
  web2 = {
    secret = ./web2;
    public = openssh ./web2.pub;
  };
}
