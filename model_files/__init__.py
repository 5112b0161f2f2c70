"""Model files, below both the network (`gpen_arch`) and the face pipeline (`face_utils`): the one safe reader of
checkpoints (`checkpoints`), the errors every loader raises (`errors`), and where the models live and which to
offer first (`folders`, shared by the nodes and the command line). `errors` and `folders` import nothing heavy."""
