# The option reference of docs/nixos.md, generated from the modules' own declarations
# (names, types, defaults, examples, descriptions). scripts/check-nixos.sh compares it with
# the docs and, with --update-docs, writes it there.
{ lib }:
optionSets:

let
  visible = o: o.visible && !o.internal;
  code = s: if lib.hasInfix "\n" s then "\n\n```nix\n${lib.removeSuffix "\n" s}\n```\n" else " `${s}`";
  entry =
    o:
    let
      default = lib.optionalString (o ? default) "\n- default:${code o.default.text}";
      example = lib.optionalString (o ? example) "\n- example:${code o.example.text}";
    in
    ''
      ### `${o.name}`

      ${lib.trim o.description}

      - type: ${o.type}${default}${example}
    '';
in
lib.concatMapStringsSep "\n" entry (
  lib.filter visible (lib.concatMap lib.optionAttrSetToDocList optionSets)
)
