# Layer 2 of the repository library (helper repo-catalog): the index, the manifest, retention.
# Included from src/repository/CMakeLists.txt after blksnap_repository is defined (it must link
# OpenSSL libcrypto and nlohmann_json). The lead merges these lists into that file.
target_sources(blksnap_repository PRIVATE index.cc manifest.cc retention.cc)
blksnap_unit_test(repository_catalog_test
  SOURCES index_test.cc manifest_test.cc retention_test.cc
  LIBS blksnap_repository)
