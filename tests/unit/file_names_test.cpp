// The tool's file-name conventions (io/file_names.h).
#include "io/file_names.h"

#include <gtest/gtest.h>

namespace bnadapt {
namespace {

TEST(FileNames, ImagesAreTorchvisionExtensionsAnyCase) {
  for (const char* ok : {"a.jpg", "b.JPEG", "dir/c.png", "d.PpM", "e.bmp", "f.pgm", "g.tif",
                         "h.TIFF", "i.webp", ".jpg"}) {
    EXPECT_TRUE(io::isImageFileName(ok)) << ok;
  }
  for (const char* no : {"a.gif", "b.jpg.txt", "c", "jpg", "d.pn", "e.heic", "f.JPG "}) {
    EXPECT_FALSE(io::isImageFileName(no)) << no;
  }
}

TEST(FileNames, TensorFilesArePtOrPthAndNotHidden) {
  for (const char* ok : {"a.pt", "dir/b.pth", "/x/shard-0001.pt"}) {
    EXPECT_TRUE(io::isTensorFileName(ok)) << ok;
  }
  for (const char* no : {".a.pt", "dir/.b.pth", "c.pt.gz", "d.ptx", "pt", "dir/"}) {
    EXPECT_FALSE(io::isTensorFileName(no)) << no;
  }
}

TEST(FileNames, SafetensorsAndSidecar) {
  EXPECT_TRUE(io::isSafetensorsFileName("/c/model.safetensors"));
  EXPECT_FALSE(io::isSafetensorsFileName("/c/model.safetensors.bak"));
  EXPECT_EQ(io::sidecarPath("/c/out.pt"), "/c/out.pt.sha256");
}

TEST(FileNames, IdxImagesNamesSplitAndSuggestLabels) {
  const auto name = io::splitIdxImagesName("/d/train-images-idx3-ubyte.gz");
  ASSERT_TRUE(name.has_value());
  EXPECT_EQ(name->prefix, "/d/train-images");
  EXPECT_EQ(name->sep, '-');
  EXPECT_TRUE(name->gz);
  EXPECT_EQ(io::idxLabelsCandidates("/d/train-images-idx3-ubyte.gz"),
            (std::vector<std::string>{"/d/train-labels-idx1-ubyte.gz",
                                      "/d/train-labels-idx1-ubyte",
                                      "/d/train-images-idx1-ubyte.gz",
                                      "/d/train-images-idx1-ubyte"}));
  // "images" only counts in the file name, not in a folder name.
  EXPECT_EQ(io::idxLabelsCandidates("/images/t10k.idx3-ubyte"),
            (std::vector<std::string>{"/images/t10k.idx1-ubyte", "/images/t10k.idx1-ubyte.gz"}));
  EXPECT_FALSE(io::splitIdxImagesName("/d/-idx3-ubyte").has_value());
  EXPECT_TRUE(io::idxLabelsCandidates("/d/train.pt").empty());
}

}  // namespace
}  // namespace bnadapt
