mod smart;
