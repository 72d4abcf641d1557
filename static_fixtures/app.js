console.log("an unfingerprinted script");
